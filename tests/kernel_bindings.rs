//! Each kernel is declared once in Rust (`gpu::kernels!`: entry point and the access of each
//! binding; `gpu::kernel_params!`: its `Params` struct) and once in WGSL. This test reads every
//! shader with naga, as the device compiles it (prelude, generated constants, libraries), and
//! checks the two agree for every entry point:
//!
//! - every compute entry point of every shader is declared in Rust, and every declared kernel
//!   exists;
//! - the `@group(0)` bindings the entry point uses (directly or through the functions it calls)
//!   are exactly those the Rust access list does not mark `Unused`, with the same kind: a
//!   `read` storage buffer for `Read`, a `read_write` one for `ReadWrite` (which the entry must
//!   write: no placeholder write slots), a write-only storage texture of the same format for
//!   `WriteTexture`;
//! - the `params` struct (`@group(1) @binding(0)`) has the Rust struct's size, and the same
//!   named fields at the same offsets with the same scalar types (padding `_*` aside);
//! - the entry stays within the device limits the context checks up front
//!   (`gpu::requirements`): storage buffers and textures, workgroup size and invocations, and
//!   workgroup memory where its size is fixed.

use naga::valid::{Capabilities, GlobalUse, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, ArraySize, ImageClass, Module, StorageAccess, TypeInner};
use rectiflow::gpu::{requirements, Access, Kernel, ParamsLayout};
use rectiflow::shaders::{Shader, ALL, LIBRARIES};
use rectiflow::wgpu;
use std::collections::{BTreeSet, HashMap};

fn compile(shader: &Shader) -> (Module, ModuleInfo) {
    let source = shader.wgsl();
    let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
        panic!(
            "{}.wgsl does not parse:\n{}",
            shader.name,
            e.emit_to_string(&source)
        )
    });
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}.wgsl does not validate: {e:?}", shader.name));
    (module, info)
}

fn texture_format(format: naga::StorageFormat) -> Option<wgpu::TextureFormat> {
    match format {
        naga::StorageFormat::Rgba8Unorm => Some(wgpu::TextureFormat::Rgba8Unorm),
        naga::StorageFormat::Rgba32Float => Some(wgpu::TextureFormat::Rgba32Float),
        _ => None,
    }
}

/// What the entry point does with binding `b` of group 0, as the Rust side would say it.
fn wgsl_access(
    module: &Module,
    ty: naga::Handle<naga::Type>,
    space: AddressSpace,
    uses: GlobalUse,
) -> Result<Access, String> {
    match (space, &module.types[ty].inner) {
        (AddressSpace::Storage { access }, _) => {
            if access.contains(StorageAccess::STORE) {
                if !uses.contains(GlobalUse::WRITE) {
                    return Err("is declared read_write but never written (a placeholder?)".into());
                }
                Ok(Access::ReadWrite)
            } else {
                Ok(Access::Read)
            }
        }
        (
            AddressSpace::Handle,
            TypeInner::Image {
                class: ImageClass::Storage { format, access },
                dim: naga::ImageDimension::D2,
                arrayed: false,
            },
        ) if *access == StorageAccess::STORE => texture_format(*format)
            .map(Access::WriteTexture)
            .ok_or_else(|| format!("is a storage texture of format {format:?}")),
        (space, inner) => Err(format!(
            "is a {space:?} {inner:?}, which kernels do not bind"
        )),
    }
}

fn scalar_name(module: &Module, ty: naga::Handle<naga::Type>) -> Option<&'static str> {
    match module.types[ty].inner {
        TypeInner::Scalar(s) => match (s.kind, s.width) {
            (naga::ScalarKind::Uint, 4) => Some("u32"),
            (naga::ScalarKind::Sint, 4) => Some("i32"),
            (naga::ScalarKind::Float, 4) => Some("f32"),
            _ => None,
        },
        _ => None,
    }
}

/// The `params` struct against its Rust layout; problems as text.
fn check_params(module: &Module, layout: &ParamsLayout, problems: &mut Vec<String>) {
    let Some((_, params)) = module.global_variables.iter().find(|(_, g)| {
        g.binding
            .as_ref()
            .is_some_and(|b| b.group == 1 && b.binding == 0)
    }) else {
        problems.push("has no @group(1) @binding(0) params".into());
        return;
    };
    let TypeInner::Struct { members, span } = &module.types[params.ty].inner else {
        problems.push("params is not a struct".into());
        return;
    };
    if *span as usize != layout.size {
        problems.push(format!(
            "params is {span} bytes in WGSL, {} in Rust ({})",
            layout.size, layout.name
        ));
    }
    let named = |n: &str| !n.starts_with('_');
    for (name, offset, ty) in layout.fields.iter().filter(|f| named(f.0)) {
        match members.iter().find(|m| m.name.as_deref() == Some(name)) {
            None => problems.push(format!("params has no field `{name}` ({})", layout.name)),
            Some(m) => {
                if m.offset as usize != *offset {
                    problems.push(format!(
                        "params.{name} is at byte {} in WGSL, {offset} in Rust",
                        m.offset
                    ));
                }
                if scalar_name(module, m.ty) != Some(ty) {
                    problems.push(format!(
                        "params.{name} is {:?} in WGSL, {ty} in Rust",
                        module.types[m.ty].inner
                    ));
                }
            }
        }
    }
    for m in members {
        let name = m.name.as_deref().unwrap_or("");
        if named(name) && !layout.fields.iter().any(|f| f.0 == name) {
            problems.push(format!(
                "params.{name} is in WGSL, not in Rust ({})",
                layout.name
            ));
        }
    }
}

/// Everything wrong with one kernel against its module.
fn check_kernel(kernel: &Kernel, module: &Module, info: &ModuleInfo) -> Vec<String> {
    let mut problems = Vec::new();
    let Some((index, entry)) = module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, e)| e.name == kernel.entry)
    else {
        return vec!["no such entry point".into()];
    };
    let uses = info.get_entry_point(index);
    let mut used: HashMap<u32, Access> = HashMap::new();
    let mut buffers = 0;
    let mut textures = 0;
    let mut workgroup_bytes = 0u64;
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    for (handle, global) in module.global_variables.iter() {
        let use_ = uses[handle];
        if use_.is_empty() {
            continue;
        }
        if global.space == AddressSpace::WorkGroup {
            let fixed = !matches!(
                module.types[global.ty].inner,
                TypeInner::Array {
                    size: ArraySize::Pending(_),
                    ..
                }
            );
            if fixed {
                workgroup_bytes += layouter[global.ty].size as u64;
            }
            continue;
        }
        let Some(binding) = &global.binding else {
            continue;
        };
        if binding.group != 0 {
            continue;
        }
        let name = global.name.as_deref().unwrap_or("?");
        match wgsl_access(module, global.ty, global.space, use_) {
            Ok(access) => {
                if matches!(access, Access::WriteTexture(_)) {
                    textures += 1;
                } else {
                    buffers += 1;
                }
                if let Some(before) = used.insert(binding.binding, access) {
                    problems.push(format!(
                        "uses two globals at binding {} ({before:?} and `{name}`)",
                        binding.binding
                    ));
                }
            }
            Err(why) => problems.push(format!("binding {} (`{name}`) {why}", binding.binding)),
        }
    }
    let declared = kernel.access.len() as u32;
    for (&b, access) in &used {
        if b >= declared {
            problems.push(format!(
                "uses binding {b} ({access:?}), past the {declared} the Rust access list declares"
            ));
        }
    }
    for (b, access) in kernel.access.iter().enumerate() {
        let wgsl = used.get(&(b as u32)).copied().unwrap_or(Access::Unused);
        if wgsl != *access {
            problems.push(format!(
                "binding {b}: Rust says {access:?}, the WGSL entry point uses it as {wgsl:?}"
            ));
        }
    }
    match kernel.params {
        Some(layout) => check_params(module, layout, &mut problems),
        None => problems.push("declares no params layout".into()),
    }
    if buffers > requirements::STORAGE_BUFFERS_PER_STAGE {
        problems.push(format!(
            "binds {buffers} storage buffers, more than the {} the context requires",
            requirements::STORAGE_BUFFERS_PER_STAGE
        ));
    }
    if textures > requirements::STORAGE_TEXTURES_PER_STAGE {
        problems.push(format!("binds {textures} storage textures"));
    }
    if entry.workgroup_size_overrides.is_none() {
        let [x, y, z] = entry.workgroup_size;
        if x > requirements::WORKGROUP_SIZE_X
            || y > requirements::WORKGROUP_SIZE_Y
            || x * y * z > requirements::INVOCATIONS_PER_WORKGROUP
        {
            problems.push(format!(
                "a workgroup of {x}x{y}x{z} exceeds the required limits"
            ));
        }
    }
    if workgroup_bytes > requirements::WORKGROUP_STORAGE_BYTES as u64 {
        problems.push(format!(
            "uses {workgroup_bytes} bytes of workgroup memory, more than the {} required",
            requirements::WORKGROUP_STORAGE_BYTES
        ));
    }
    problems
}

#[test]
fn every_kernel_matches_its_wgsl_bindings_and_params() {
    let kernels = rectiflow::ops::all_kernels();
    let mut problems = Vec::new();
    let mut modules = HashMap::new();
    for shader in ALL {
        modules.insert(shader.name, compile(shader));
    }
    let mut declared = BTreeSet::new();
    for kernel in &kernels {
        let name = format!("{}::{}", kernel.shader.name, kernel.entry);
        assert!(declared.insert(name.clone()), "{name} is declared twice");
        let Some((module, info)) = modules.get(kernel.shader.name) else {
            problems.push(format!("{name}: its shader is not in shaders::ALL"));
            continue;
        };
        for p in check_kernel(kernel, module, info) {
            problems.push(format!("{name}: {p}"));
        }
    }
    for shader in ALL {
        let (module, _) = &modules[shader.name];
        for entry in &module.entry_points {
            let name = format!("{}::{}", shader.name, entry.name);
            if !declared.contains(&name) {
                problems.push(format!("{name} has no Rust declaration"));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    // Enough checks ran to mean something.
    assert!(kernels.len() >= 40, "{} kernels", kernels.len());
}

#[test]
fn every_library_is_used_and_listed() {
    for library in LIBRARIES {
        let prelude = library.name == "prelude";
        assert!(
            prelude
                || ALL
                    .iter()
                    .any(|s| s.libraries.iter().any(|l| l.name == library.name)),
            "shaders/common/{}.wgsl is used by no shader",
            library.name
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/common");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        assert!(
            LIBRARIES.iter().any(|l| l.name == stem),
            "shaders/common/{stem}.wgsl is not in shaders::LIBRARIES"
        );
    }
    // The workgroup-index fold lives in the prelude alone.
    for shader in ALL {
        assert!(
            !shader.source.contains("wid.x + wid.y * nwg.x"),
            "{}.wgsl folds the workgroup index itself: call workgroup_index",
            shader.name
        );
    }
}
