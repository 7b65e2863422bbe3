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
