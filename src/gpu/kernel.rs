//! What a kernel is: a WGSL entry point, the kind of each of its `@group(0)` bindings, and the
//! layout of the parameter struct it takes. The engine declares each kernel once, with
//! `kernels!` (entry and bindings) and `kernel_params!` (the `Params` struct); a test
//! (`tests/kernel_bindings.rs`) checks both against the WGSL with naga.
//!
//! Parameter convention shared by every shader: storage buffers (and storage textures) in
//! `@group(0)`, and one parameter struct declared exactly as
//! `@group(1) @binding(0) var<uniform> params: Params;`. Where the device supports immediates,
//! that line is rewritten to `var<immediate> params: Params;` before compiling.

use super::pool::Storage;
pub use crate::shaders::Shader;
use std::sync::Arc;

/// How a kernel uses one `@group(0)` binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A storage buffer the kernel only reads.
    Read,
    /// A storage buffer the kernel writes (and may read).
    ReadWrite,
    /// A 2-D storage texture of this format the kernel writes.
    WriteTexture(wgpu::TextureFormat),
    /// A binding number this entry point does not use (its file declares it for another entry):
    /// left out of the layout, so nothing is bound there.
    Unused,
}

/// The layout of a kernel's parameter struct, for the test that compares it with the WGSL
/// struct (declared with the crate's `kernel_params!`).
#[derive(Debug, PartialEq, Eq)]
pub struct ParamsLayout {
    /// The Rust type (`module::Params`).
    pub name: &'static str,
    /// `size_of` the struct.
    pub size: usize,
    /// Each field: name, byte offset, Rust type as written.
    pub fields: &'static [(&'static str, usize, &'static str)],
}

/// A kernel's parameter struct: plain bytes with a layout the tests can see.
pub trait KernelParams: bytemuck::Pod {
    /// Its layout.
    const LAYOUT: ParamsLayout;
}

/// One entry point of a shader, with the kind of each `@group(0)` binding in order.
#[derive(Debug)]
pub struct Kernel {
    /// The shader that holds the entry point.
    pub shader: &'static Shader,
    /// The entry point's name.
    pub entry: &'static str,
    /// Binding `i` of group 0 is used as `access[i]`.
    pub access: &'static [Access],
    /// The parameter struct the engine's kernels take (`None` for a user's kernel, which takes
    /// any plain struct of at most 128 bytes).
    pub params: Option<&'static ParamsLayout>,
}

impl Kernel {
    /// A user's kernel: entry point `entry` of `shader`, binding `i` of group 0 used as
    /// `access[i]`.
    pub const fn new(
        shader: &'static Shader,
        entry: &'static str,
        access: &'static [Access],
    ) -> Kernel {
        Kernel {
            shader,
            entry,
            access,
            params: None,
        }
    }

    /// One of the engine's kernels (declared with [`kernels!`]).
    pub(crate) const fn engine(
        shader: &'static Shader,
        entry: &'static str,
        access: &'static [Access],
        params: &'static ParamsLayout,
    ) -> Kernel {
        Kernel {
            params: Some(params),
            ..Kernel::new(shader, entry, access)
        }
    }
}

/// What is bound to one binding of a dispatch.
#[derive(Clone, Copy)]
pub(crate) enum Binding<'a> {
    /// `size` bytes of a storage buffer at `offset`.
    Buffer {
        storage: &'a Arc<Storage>,
        offset: u64,
        size: u64,
    },
    /// A view of a storage texture.
    Texture(&'a wgpu::TextureView),
    /// Nothing: the kernel does not use this binding ([`Access::Unused`]).
    Unused,
}

impl Binding<'_> {
    /// Whether this binding fits a slot of kind `access`.
    pub(crate) fn fits(&self, access: Access) -> bool {
        matches!(
            (self, access),
            (Binding::Buffer { .. }, Access::Read | Access::ReadWrite)
                | (Binding::Texture(_), Access::WriteTexture(_))
                | (Binding::Unused, Access::Unused)
        )
    }
}

/// Declares kernels once: per shader, the struct their parameters travel in and, per kernel,
/// its entry point and the [`Access`] of each `@group(0)` binding in order. Makes a `static`
/// [`Kernel`] of each and `KERNELS`, the file's list (checked against the WGSL by the tests).
///
/// ```ignore
/// kernels! {
///     ELEMENTWISE, Params {
///         UNARY = unary(Read, Unused, ReadWrite);
///         BINARY = binary(Read, Read, ReadWrite);
///     }
/// }
/// ```
macro_rules! kernels {
    ($($shader:path, $params:ty {
        $($(#[$meta:meta])* $name:ident = $entry:ident(
            $($access:ident $(($format:ident))?),* $(,)?
        );)+
    })+) => {
        $($(
            $(#[$meta])*
            static $name: $crate::gpu::Kernel = $crate::gpu::Kernel::engine(
                &$shader,
                stringify!($entry),
                &[$($crate::gpu::Access::$access $((wgpu::TextureFormat::$format))?),*],
                &<$params as $crate::gpu::KernelParams>::LAYOUT,
            );
        )+)+
        /// Every kernel this file declares (the tests check each against its WGSL).
        pub(crate) static KERNELS: &[&$crate::gpu::Kernel] = &[$($(&$name),+),+];
    };
}
pub(crate) use kernels;

/// Declares a kernel's parameter struct: `#[repr(C)]`, plain bytes, and its [`ParamsLayout`]
/// (fields, offsets, size) for the test that compares it with the WGSL struct of the same
/// shader. Fields whose names start with `_` are padding and are not compared by name.
macro_rules! kernel_params {
    ($(#[$meta:meta])* struct $name:ident {
        $($(#[$field_meta:meta])* $field:ident: $ty:ty),* $(,)?
    }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($(#[$field_meta])* $field: $ty),*
        }
        impl $crate::gpu::KernelParams for $name {
            const LAYOUT: $crate::gpu::ParamsLayout = $crate::gpu::ParamsLayout {
                name: concat!(module_path!(), "::", stringify!($name)),
                size: std::mem::size_of::<$name>(),
                fields: &[$((stringify!($field), std::mem::offset_of!($name, $field), stringify!($ty))),*],
            };
        }
    };
}
pub(crate) use kernel_params;
