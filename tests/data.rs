//! Data files: `.npy` headers in NumPy's format 1.0, data sets loaded from their specs and IDX
//! files, and bad files refused with clear errors.

mod common;

use common::tiny::temp_dir;
use rectiflow::data::{self, Dataset};
use rectiflow::output::npy_header;

#[test]
fn npy_headers_follow_numpy_format_1_0() {
    for shape in [vec![100, 1, 8, 8], vec![5000, 2], vec![7]] {
        let h = npy_header("<f4", &shape);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([h[8], h[9]]) as usize;
        assert_eq!(h.len(), 10 + len);
        assert_eq!(h.len() % 64, 0, "data starts 64-byte aligned");
        let dict = std::str::from_utf8(&h[10..]).unwrap();
        assert!(dict.ends_with('\n'));
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let want = if shape.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        assert!(
            dict.starts_with(&format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': {want}, }}"
            )),
            "{dict}"
        );
    }
}

fn write_idx(path: &std::path::Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn data_sets_load_and_bad_files_get_clear_errors() {
    let d = data::digits().unwrap();
    assert_eq!((d.len(), d.dim(), d.classes), (1797, 64, 10));
    assert!(d.x.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(&d.labels.as_ref().unwrap()[..5], &[0, 1, 2, 3, 4]);
    for toy in data::TOYS {
        let t = data::toy(toy, 1000, 0).unwrap();
        assert_eq!(t.len(), 1000);
        assert!(t.x.iter().all(|v| v.is_finite() && v.abs() < 4.0), "{toy}");
    }
    assert!(data::toy("circles", 10, 0)
        .unwrap_err()
        .to_string()
        .contains("checkerboard"));

    let dir = temp_dir("idx");
    let (img, lab) = (dir.join("img.idx"), dir.join("lab.idx"));
    write_idx(
        &img,
        2051,
        &[3, 2, 2],
        &[0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
    );
    write_idx(&lab, 2049, &[3], &[7, 2, 1]);
    let spec = format!("idx:{},{}", img.display(), lab.display());
    let ds = Dataset::from_spec(&spec, 0).unwrap();
    assert_eq!(
        (ds.len(), ds.shape.clone(), ds.classes),
        (3, vec![1, 2, 2], 8)
    );
    assert_eq!(ds.x[1], 1.0);
    // gzipped works too
    let gz = dir.join("img.idx.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &std::fs::read(&img).unwrap()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(
        Dataset::from_spec(&format!("idx:{}", gz.display()), 0)
            .unwrap()
            .x,
        ds.x
    );

    let err = Dataset::from_spec(&format!("idx:{}", dir.join("nope").display()), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read") && err.contains("nope"), "{err}");
    let err = Dataset::from_spec(&format!("idx:{}", lab.display()), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("magic") && err.contains("2051"), "{err}");
    let short = dir.join("short.idx");
    write_idx(&short, 2051, &[3, 2, 2], &[1, 2, 3]);
    let err = Dataset::from_spec(&format!("idx:{}", short.display()), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    let lab2 = dir.join("lab2.idx");
    write_idx(&lab2, 2049, &[2], &[1, 2]);
    let err = Dataset::from_spec(&format!("idx:{},{}", img.display(), lab2.display()), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 labels for 3 images"), "{err}");
}
