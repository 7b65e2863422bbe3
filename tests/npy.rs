//! The `.npy` reader and writer: what the library writes reads back exactly (float32 samples,
//! int64 labels, the files `output::write_samples` leaves), and what it does not read (other
//! dtypes, big-endian, Fortran order, broken headers and bodies) is refused with the reason.

use rectiflow::npy::{self, Dtype, Npy, NpyData};
use rectiflow::Error;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rectiflow-npy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `.npy` file with a hand-written header dictionary (format 1.0) and body.
fn with_dict(dict: &str, body: &[u8]) -> Vec<u8> {
    let mut text = dict.to_string();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((text.len() as u16).to_le_bytes());
    out.extend(text.as_bytes());
    out.extend(body);
    out
}

#[test]
fn what_the_library_writes_reads_back_exactly() {
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    for shape in [vec![2, 3, 4], vec![24], vec![1, 1, 4, 6]] {
        let a = npy::parse(&npy::f32_bytes(&shape, &values)).unwrap();
        assert_eq!(a.shape, shape);
        assert_eq!(a.dtype(), Dtype::F32);
        assert_eq!(a.data, NpyData::F32(values.clone()));
    }
    let labels = vec![0i64, 9, 3, 1 << 40];
    let a = npy::parse(&npy::i64_bytes(&[4], &labels)).unwrap();
    assert_eq!((a.shape.clone(), a.dtype()), (vec![4], Dtype::I64));
    assert_eq!(a.data, NpyData::I64(labels));
    // A scalar and an empty array.
    let scalar = npy::parse(&npy::f32_bytes(&[], &[7.5])).unwrap();
    assert_eq!(
        (scalar.shape, scalar.data),
        (vec![], NpyData::F32(vec![7.5]))
    );
    let empty = npy::parse(&npy::f32_bytes(&[0, 3], &[])).unwrap();
    assert_eq!(empty.shape, vec![0, 3]);
    // Through files, and through the writer of sample sets.
    let dir = temp_dir("files");
    npy::write_f32(&dir.join("a.npy"), &[2, 12], &values).unwrap();
    assert_eq!(
        npy::read(&dir.join("a.npy"))
            .unwrap()
            .into_f32("a.npy")
            .unwrap(),
        values
    );
    npy::write_labels(&dir.join("l.npy"), &[3, 0, 7]).unwrap();
    assert_eq!(
        npy::read(&dir.join("l.npy"))
            .unwrap()
            .into_labels("l.npy")
            .unwrap(),
        vec![3, 0, 7]
    );
    let images: Vec<f32> = (0..3 * 64).map(|i| (i % 17) as f32 / 8.0 - 1.0).collect();
    rectiflow::output::write_samples(
        &dir.join("grid.png"),
        &[1, 8, 8],
        &images,
        &[4, 5, 6],
        &Default::default(),
    )
    .unwrap();
    let samples = npy::read(&dir.join("samples.npy")).unwrap();
    assert_eq!(samples.shape, vec![3, 1, 8, 8]);
    assert_eq!(samples.into_f32("samples.npy").unwrap(), images);
    let labels = npy::read(&dir.join("labels.npy")).unwrap();
    assert_eq!(labels.into_labels("labels.npy").unwrap(), vec![4, 5, 6]);
    // Format 2.0 (a 4-byte header length) is read too.
    let v1 = npy::f32_bytes(&[3], &[1.0, 2.0, 3.0]);
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend((u16::from_le_bytes([v1[8], v1[9]]) as u32).to_le_bytes());
    v2.extend(&v1[10..]);
    assert_eq!(
        npy::parse(&v2).unwrap().data,
        NpyData::F32(vec![1.0, 2.0, 3.0])
    );
    // Round trip of the in-memory form.
    let a = Npy {
        shape: vec![2],
        data: NpyData::I64(vec![-1, 5]),
    };
    assert_eq!(npy::parse(&a.to_bytes()).unwrap(), a);
}

#[test]
fn other_dtypes_and_broken_files_are_refused_with_the_reason() {
    let refused = |bytes: &[u8], want: &str| {
        let e = npy::parse(bytes).unwrap_err();
        assert!(matches!(e, Error::Data(_)), "{e:?}");
        assert!(e.to_string().contains(want), "wanted {want:?} in {e}");
    };
    let body = [0u8; 16];
    refused(
        &with_dict(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
            &body,
        ),
        "astype(np.float32)",
    );
    refused(
        &with_dict(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }",
            &body,
        ),
        "'>f4'",
    );
    refused(
        &with_dict(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (16,), }",
            &body,
        ),
        "little-endian float32",
    );
    refused(
        &with_dict(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            &body,
        ),
        "Fortran",
    );
    refused(
        &with_dict(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }",
            &body,
        ),
        "truncated",
    );
    refused(
        &with_dict(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            &body,
        ),
        "truncated",
    );
    refused(
        &with_dict(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (a, b), }",
            &body,
        ),
        "not a tuple of sizes",
    );
    refused(
        &with_dict(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
            &body,
        ),
        "truncated",
    );
    refused(
        &with_dict("{'fortran_order': False, 'shape': (4,), }", &body),
        "no 'descr'",
    );
    refused(b"\x93NUMPY", "magic");
    refused(b"PK\x03\x04 a zip file, not an array", "magic");
    refused(b"\x93NUMPY\x09\x00\x10\x00", "version 9.0");
    let mut long = npy::f32_bytes(&[1], &[1.0]);
    long[8..10].copy_from_slice(&60_000u16.to_le_bytes());
    refused(&long, "runs past the end");
    // Values that are not labels, and arrays of the other kind.
    let e = npy::parse(&npy::i64_bytes(&[2], &[1, -4]))
        .unwrap()
        .into_labels("labels.npy")
        .unwrap_err();
    assert!(e.to_string().contains("label 1 is -4"), "{e}");
    let e = npy::parse(&npy::f32_bytes(&[1], &[1.0]))
        .unwrap()
        .into_labels("x.npy")
        .unwrap_err();
    assert!(e.to_string().contains("astype(np.int64)"), "{e}");
    let e = npy::parse(&npy::i64_bytes(&[1], &[1]))
        .unwrap()
        .into_f32("y.npy")
        .unwrap_err();
    assert!(e.to_string().contains("astype(np.float32)"), "{e}");
    // Files: missing, a directory, over the size given, a damaged one named.
    let dir = temp_dir("bad");
    let e = npy::read(&dir.join("nope.npy")).unwrap_err();
    assert!(
        matches!(e, Error::Io(_)) && e.to_string().contains("nope.npy"),
        "{e}"
    );
    assert!(npy::read(&dir)
        .unwrap_err()
        .to_string()
        .contains("not a regular file"));
    npy::write_f32(&dir.join("big.npy"), &[100], &[0.0; 100]).unwrap();
    let e = npy::read_within(&dir.join("big.npy"), 100).unwrap_err();
    assert!(matches!(e, Error::TooLarge(_)), "{e}");
    std::fs::write(
        dir.join("cut.npy"),
        &npy::f32_bytes(&[100], &[0.0; 100])[..200],
    )
    .unwrap();
    let e = npy::read(&dir.join("cut.npy")).unwrap_err();
    assert!(
        e.to_string().contains("cut.npy") && e.to_string().contains("truncated"),
        "{e}"
    );
    // Writing refuses a shape that does not hold the values.
    assert!(npy::write_f32(&dir.join("w.npy"), &[3], &[1.0]).is_err());
}
