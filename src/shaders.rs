//! The WGSL sources, embedded in the binary, and how a module's text is put together.
//!
//! An engine shader's module is, in order: the prelude (`shaders/common/prelude.wgsl`: the
//! workgroup-index fold every kernel uses, `PI`), the numbers it shares with Rust as generated
//! `const` lines (op codes, enum numbers: declared once, here, by `codes!`), the libraries it
//! uses (`shaders/common/*.wgsl`: the Philox generator, the matmul activation), then the file
//! itself. A variant of a file may make some of its type aliases f16 (the matmuls with f16
//! operands, [`MATMUL_F16`]): a module of its own, opened by `enable f16;`. A user's shader
//! ([`Shader::new`]) is compiled as written.
//!
//! This is the lowest layer: the GPU context compiles these, the ops name their kernels in them.

use std::borrow::Cow;

/// A piece of WGSL that several shaders include (`shaders/common/`).
#[derive(Debug)]
pub struct Library {
    /// The file's stem, for error messages.
    pub name: &'static str,
    /// Its text.
    pub source: &'static str,
}

/// One WGSL source file and what goes in front of it.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// The module's name (`matmul`, `matmul_f16b`); errors and profiles name kernels
    /// `shader::entry`.
    pub name: &'static str,
    /// The stem of the file its text comes from (`shaders/{file}.wgsl`): the name, except for
    /// a variant (`matmul_f16b` is made from `matmul`).
    pub file: &'static str,
    /// The file's own text.
    pub source: &'static str,
    /// Device features the file needs (e.g. `SHADER_F16` for `enable f16;`).
    pub requires: wgpu::Features,
    /// Whether the prelude goes first (every engine shader; not a user's).
    pub prelude: bool,
    /// Numbers shared with Rust, each written as `const NAME: u32 = VALUE;`.
    pub constants: &'static [&'static [(&'static str, u32)]],
    /// Libraries placed before the file's text.
    pub libraries: &'static [&'static Library],
    /// Type aliases of the file (`alias A_ELEM = f32;`) made f16 in this variant, which then
    /// opens with `enable f16;` (the matmuls' operand storage: [`MATMUL_F16`]).
    pub f16_aliases: &'static [&'static str],
}

impl Shader {
    /// A shader compiled exactly as written (a user's kernel): no prelude, constants or
    /// libraries, no device features required.
    pub const fn new(name: &'static str, source: &'static str) -> Shader {
        Shader {
            name,
            file: name,
            source,
            requires: wgpu::Features::empty(),
            prelude: false,
            constants: &[],
            libraries: &[],
            f16_aliases: &[],
        }
    }

    /// One of the engine's shaders: the prelude goes first.
    const fn engine(name: &'static str, source: &'static str) -> Shader {
        Shader {
            prelude: true,
            ..Shader::new(name, source)
        }
    }

    /// The same shader, needing `features` of the device.
    pub const fn requiring(self, features: wgpu::Features) -> Shader {
        Shader {
            requires: features,
            ..self
        }
    }

    const fn with_constants(self, constants: &'static [&'static [(&'static str, u32)]]) -> Shader {
        Shader { constants, ..self }
    }

    const fn with_libraries(self, libraries: &'static [&'static Library]) -> Shader {
        Shader { libraries, ..self }
    }

    /// The variant `name` of this shader in which each type alias of `aliases` is f16 instead
    /// of f32 (a module of its own, needing `SHADER_F16`).
    const fn with_f16(self, name: &'static str, aliases: &'static [&'static str]) -> Shader {
        Shader {
            name,
            f16_aliases: aliases,
            requires: self.requires.union(wgpu::Features::SHADER_F16),
            ..self
        }
    }

    /// The module's full text: prelude, generated constants, libraries, then the file.
    pub fn wgsl(&self) -> Cow<'static, str> {
        if !self.prelude
            && self.constants.is_empty()
            && self.libraries.is_empty()
            && self.f16_aliases.is_empty()
        {
            return Cow::Borrowed(self.source);
        }
        // Directives (`enable f16;`) must open the module: they go before the prelude.
        let directive = |line: &str| {
            let line = line.trim_start();
            line.starts_with("enable ") || line.starts_with("requires ")
        };
        let mut text = String::new();
        if !self.f16_aliases.is_empty() {
            text.push_str("enable f16;\n");
        }
        for line in self.source.lines().filter(|l| directive(l)) {
            text.push_str(line);
            text.push('\n');
        }
        if self.prelude {
            text.push_str(PRELUDE.source);
        }
        if !self.constants.is_empty() {
            text.push_str("\n// Generated from src/shaders.rs: numbers shared with Rust.\n");
            for (name, value) in self.constants.iter().copied().flatten() {
                text.push_str(&format!("const {name}: u32 = {value}u;\n"));
            }
        }
        for library in self.libraries {
            text.push_str(&format!("\n// ---- library {} ----\n", library.name));
            text.push_str(library.source);
        }
        text.push_str(&format!("\n// ---- {}.wgsl ----\n", self.file));
        let f16_alias = |line: &str| {
            self.f16_aliases
                .iter()
                .find(|a| line.trim() == format!("alias {a} = f32;"))
        };
        for line in self.source.lines() {
            // A directive keeps its line (commented out), so the file's line numbers hold.
            if directive(line) {
                text.push_str("// ");
            }
            match f16_alias(line) {
                Some(alias) => text.push_str(&format!("alias {alias} = f16;")),
                None => text.push_str(line),
            }
            text.push('\n');
        }
        Cow::Owned(text)
    }
}

/// Declares numbers that Rust and WGSL share, once: a module of `u32` constants for Rust and a
/// table `WGSL` of (prefixed name, value) from which the shaders' `const` lines are generated.
macro_rules! codes {
    ($(#[$meta:meta])* pub mod $module:ident ($prefix:literal) {
        $($(#[$item_meta:meta])* $name:ident = $value:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        pub mod $module {
            $($(#[$item_meta])* pub const $name: u32 = $value;)+
            /// The constants as the shaders see them: `const PREFIX_NAME: u32`.
            pub const WGSL: &[(&str, u32)] = &[$((concat!($prefix, stringify!($name)), $value)),+];
        }
    };
}

codes! {
    /// The elementwise operations (`OP` of `elementwise.wgsl`: `OP_GELU`, ...).
    pub mod elementwise_op ("OP_") {
        /// Unary: GELU, tanh approximation.
        GELU = 0,
        /// Unary: SiLU.
        SILU = 1,
        /// Unary: `alpha x`.
        SCALE = 2,
        /// Unary: `x` clamped to `[-alpha, alpha]`.
        CLAMP = 3,
        /// Binary: `x + y`.
        ADD = 10,
        /// Binary: `x - y`.
        SUB = 11,
        /// Binary: `x y`.
        MUL = 12,
        /// Binary: `gelu'(x) y` (x the forward input, y the output gradient).
        GELU_BACKWARD = 13,
        /// Binary: `silu'(x) y`.
        SILU_BACKWARD = 14,
        /// Binary: `alpha x y[0]`, a scale that lives on the GPU.
        SCALE_BY = 15,
    }
}

codes! {
    /// The row reductions (`OP` of `reduce.wgsl`).
    pub mod reduce_op ("OP_") {
        SUM = 0,
        MEAN = 1,
        MAX = 2,
    }
}

codes! {
    /// The modes of `modulate.wgsl`'s broadcast entries (`MODE`).
    pub mod modulate_mode ("") {
        /// `x (1 + scale) + shift`.
        MODULATE = 0,
        /// Its backward: `dy (1 + scale)`, and `dy x` to sum over tokens.
        MODULATE_BACKWARD = 1,
        /// `x + gate h`.
        GATE = 2,
        /// Its backward: `dy gate`, and `dy h` to sum over tokens.
        GATE_BACKWARD = 3,
    }
}

codes! {
    /// The matmul epilogue's activation (`ACT` of both matmul shaders).
    pub mod activation ("ACT_") {
        NONE = 0,
        GELU = 1,
        SILU = 2,
    }
}

codes! {
    /// What the matmul epilogue does with its auxiliary tensor (`AUX` of both matmul shaders).
    pub mod matmul_aux ("AUX_") {
        /// Nothing: no auxiliary tensor.
        NONE = 0,
        /// Write the pre-activation `alpha op(A) op(B) + bias` there as well as `act` of it to C.
        SAVE_PRE = 1,
        /// Read a pre-activation `p` there and write `alpha op(A) op(B) act'(p)` to C.
        ACT_GRAD = 2,
        /// Also write (or add, when accumulating) the sums of op(A)'s rows over K there,
        /// `[.., M]`, not scaled by alpha (the subgroup kernel only).
        ROW_SUMS = 3,
    }
}

codes! {
    /// The noise schedules of `flow.wgsl` (`SCHEDULE`).
    pub mod schedule ("SCHEDULE_") {
        RF = 0,
        COSINE = 1,
        LDM_LINEAR = 2,
        EDM = 3,
    }
}

codes! {
    /// The time samplers of `flow.wgsl` (`SAMPLER`).
    pub mod time_sampler ("SAMPLER_") {
        UNIFORM = 0,
        LOGNORM = 1,
        MODE = 2,
        COSMAP = 3,
        USHAPE = 4,
        GRID = 5,
    }
}

codes! {
    /// What the network predicts, in `flow.wgsl` (`PRED`).
    pub mod prediction ("PRED_") {
        VELOCITY = 0,
        EPS = 1,
        V = 2,
        X0 = 3,
    }
}

codes! {
    /// The loss weightings of `flow.wgsl` (`WEIGHTING`); the first four equal the prediction
    /// codes, which the shader uses to spot a prediction's own weighting.
    pub mod weighting ("WEIGHTING_") {
        VELOCITY = 0,
        EPS = 1,
        V = 2,
        X0 = 3,
        EDM = 4,
    }
}

codes! {
    /// The network preconditionings of `flow.wgsl` (`PRECOND`).
    pub mod precondition ("PRECOND_") {
        NONE = 0,
        EDM = 1,
    }
}

codes! {
    /// The random-number streams (the counter's third word) of the generator's users.
    pub mod stream ("STREAM_") {
        /// Training times.
        T = 0,
        /// Training noise.
        EPS = 1,
        /// Batch draws.
        BATCH = 2,
    }
}

macro_rules! library {
    ($ident:ident, $name:literal) => {
        #[doc = concat!("`shaders/common/", $name, ".wgsl`.")]
        pub static $ident: Library = Library {
            name: $name,
            source: include_str!(concat!("../shaders/common/", $name, ".wgsl")),
        };
    };
}

library!(PRELUDE, "prelude");
library!(PHILOX, "philox");
library!(ACTIVATION, "activation");
library!(VEC4, "vec4");

/// Every library, for the tests (each must be used, and every file in `shaders/common/` listed).
pub static LIBRARIES: &[&Library] = &[&PRELUDE, &PHILOX, &ACTIVATION, &VEC4];

macro_rules! shader {
    ($ident:ident, $name:literal $(, $method:ident($($arg:expr),*))*) => {
        #[doc = concat!("`shaders/", $name, ".wgsl`.")]
        pub static $ident: Shader =
            Shader::engine($name, include_str!(concat!("../shaders/", $name, ".wgsl")))
                $(.$method($($arg),*))*;
    };
}

shader!(FILL, "fill");
shader!(
    ELEMENTWISE,
    "elementwise",
    with_constants(&[elementwise_op::WGSL]),
    with_libraries(&[&VEC4])
);
shader!(REDUCE, "reduce", with_constants(&[reduce_op::WGSL]));
shader!(LAYOUT, "layout");
shader!(NORM, "norm");
shader!(MODULATE, "modulate", with_constants(&[modulate_mode::WGSL]));
shader!(EMBED, "embed");
shader!(ATTENTION, "attention");
shader!(
    ATTENTION_SUBGROUP,
    "attention_subgroup",
    requiring(wgpu::Features::SUBGROUP)
);
shader!(OPTIM, "optim");
shader!(RANDOM, "random", with_libraries(&[&PHILOX]));
shader!(
    GATHER,
    "gather",
    with_constants(&[stream::WGSL]),
    with_libraries(&[&PHILOX])
);
shader!(
    FLOW,
    "flow",
    with_constants(&[
        schedule::WGSL,
        time_sampler::WGSL,
        prediction::WGSL,
        weighting::WGSL,
        precondition::WGSL,
        stream::WGSL
    ]),
    with_libraries(&[&PHILOX])
);
shader!(
    MATMUL,
    "matmul",
    with_constants(&[activation::WGSL, matmul_aux::WGSL]),
    with_libraries(&[&ACTIVATION])
);
shader!(
    MATMUL_SUBGROUP,
    "matmul_subgroup",
    requiring(wgpu::Features::SUBGROUP),
    with_constants(&[activation::WGSL, matmul_aux::WGSL]),
    with_libraries(&[&ACTIVATION])
);

/// The matmuls with f16 operands (`SHADER_F16`): A, B or both stored as f16 and converted to f32
/// as they are loaded, so the product is summed in f32 ("f16 storage with f32 accumulation").
pub static MATMUL_F16: [&Shader; 3] = [&MATMUL_F16A, &MATMUL_F16B, &MATMUL_F16AB];
/// The subgroup matmul with f16 operands, as [`MATMUL_F16`].
pub static MATMUL_SUBGROUP_F16: [&Shader; 3] = [
    &MATMUL_SUBGROUP_F16A,
    &MATMUL_SUBGROUP_F16B,
    &MATMUL_SUBGROUP_F16AB,
];

/// [`MATMUL`] with A stored as f16.
pub static MATMUL_F16A: Shader = MATMUL.with_f16("matmul_f16a", &["A_ELEM"]);
/// [`MATMUL`] with B stored as f16.
pub static MATMUL_F16B: Shader = MATMUL.with_f16("matmul_f16b", &["B_ELEM"]);
/// [`MATMUL`] with A and B stored as f16.
pub static MATMUL_F16AB: Shader = MATMUL.with_f16("matmul_f16ab", &["A_ELEM", "B_ELEM"]);
/// [`MATMUL_SUBGROUP`] with A stored as f16.
pub static MATMUL_SUBGROUP_F16A: Shader =
    MATMUL_SUBGROUP.with_f16("matmul_subgroup_f16a", &["A_ELEM"]);
/// [`MATMUL_SUBGROUP`] with B stored as f16.
pub static MATMUL_SUBGROUP_F16B: Shader =
    MATMUL_SUBGROUP.with_f16("matmul_subgroup_f16b", &["B_ELEM"]);
/// [`MATMUL_SUBGROUP`] with A and B stored as f16.
pub static MATMUL_SUBGROUP_F16AB: Shader =
    MATMUL_SUBGROUP.with_f16("matmul_subgroup_f16ab", &["A_ELEM", "B_ELEM"]);

shader!(CAST, "cast", requiring(wgpu::Features::SHADER_F16));
shader!(TEXTURE, "texture");
shader!(SOLVER, "solver", with_libraries(&[&VEC4]));

/// Every shader, for validation tests.
pub static ALL: &[&Shader] = &[
    &FILL,
    &ELEMENTWISE,
    &REDUCE,
    &LAYOUT,
    &MATMUL,
    &MATMUL_SUBGROUP,
    &MATMUL_F16A,
    &MATMUL_F16B,
    &MATMUL_F16AB,
    &MATMUL_SUBGROUP_F16A,
    &MATMUL_SUBGROUP_F16B,
    &MATMUL_SUBGROUP_F16AB,
    &CAST,
    &NORM,
    &MODULATE,
    &EMBED,
    &ATTENTION,
    &ATTENTION_SUBGROUP,
    &OPTIM,
    &RANDOM,
    &GATHER,
    &FLOW,
    &TEXTURE,
    &SOLVER,
];
