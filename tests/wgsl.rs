//! Every WGSL file parses and validates with naga as the device compiles it (the prelude, the
//! generated constants and the libraries in front), in both parameter forms (uniform and
//! immediate), and every file in `shaders/` is registered (so none escapes this check).

use rectiflow::shaders::ALL;

fn validate(name: &str, source: &str) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}.wgsl does not parse:\n{}", e.emit_to_string(source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| {
        panic!(
            "{name}.wgsl does not validate:\n{}",
            e.emit_to_string(source)
        )
    });
}

#[test]
fn every_shader_validates_with_naga() {
    for s in ALL {
        assert!(
            s.prelude,
            "{} is an engine shader: the prelude goes first",
            s.name
        );
        let source = s.wgsl();
        validate(s.name, &source);
        let immediate = source.replace(
            "@group(1) @binding(0) var<uniform> params: Params;",
            "var<immediate> params: Params;",
        );
        assert_ne!(
            immediate, source,
            "{} declares its params the standard way",
            s.name
        );
        validate(s.name, &immediate);
    }
}

#[test]
fn every_file_in_shaders_is_registered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                ALL.iter().any(|s| s.name == stem),
                "{stem}.wgsl is not in shaders::ALL"
            );
        }
    }
}

/// The f16 variants (the matmuls with f16 operands) are their file with exactly the named type
/// aliases made f16: a renamed alias would otherwise leave an "f16" module that is f32 and
/// still validates.
#[test]
fn every_f16_variant_makes_its_aliases_f16_and_nothing_else() {
    let variants: Vec<_> = ALL.iter().filter(|s| !s.f16_aliases.is_empty()).collect();
    assert_eq!(variants.len(), 6, "three per matmul file");
    for s in variants {
        let text = s.wgsl();
        assert!(
            text.starts_with("enable f16;\n"),
            "{} opens with enable f16",
            s.name
        );
        let plain = ALL
            .iter()
            .find(|p| p.name == s.file)
            .unwrap_or_else(|| panic!("{} is made from a registered file", s.name));
        assert_eq!(plain.source, s.source, "{} has its file's text", s.name);
        for alias in ["A_ELEM", "B_ELEM"] {
            let (f16, f32) = (
                format!("alias {alias} = f16;"),
                format!("alias {alias} = f32;"),
            );
            let made_f16 = s.f16_aliases.contains(&alias);
            assert_eq!(
                text.matches(&f16).count(),
                made_f16 as usize,
                "{} {alias}",
                s.name
            );
            assert_eq!(
                text.matches(&f32).count(),
                !made_f16 as usize,
                "{} {alias}",
                s.name
            );
            assert_eq!(
                plain.wgsl().matches(&f32).count(),
                1,
                "{} {alias}",
                plain.name
            );
        }
        // Apart from those lines (and the directive) the module is its file's.
        let strip = |t: &str| -> String {
            t.lines()
                .filter(|l| {
                    !l.starts_with("alias ")
                        && !l.starts_with("enable ")
                        && !l.starts_with("// ----")
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&text), strip(&plain.wgsl()), "{}", s.name);
    }
}
