//! Loading `last_block.safetensors`: round trip, f16 input, and a clear error for every
//! manifest/file mismatch (missing tensor, wrong shape, wrong dtype, corrupt file).

use std::path::Path;

use anytime_runtime::block::{
    block_tensor_shapes, head_tensor_shapes, load_block, save_block, BlockDims, BlockParams,
    FrozenHead, LastBlock, WeightsError,
};
use anytime_testkit::close;
use safetensors::{tensor::TensorView, Dtype};

const DIMS: BlockDims = BlockDims {
    width: 8,
    heads: 2,
    mlp: 16,
    tokens: 5,
    embed: 4,
};

fn fixture() -> (BlockParams, FrozenHead) {
    (
        BlockParams::random(&DIMS, 11),
        FrozenHead::random(&DIMS, 12),
    )
}

/// Writes every tensor of the fixture with `edit` applied to (name, dtype, shape, bytes);
/// `edit` returning `None` leaves the tensor out.
fn write_edited(
    path: &Path,
    edit: impl Fn(&str, Vec<usize>, &[f32]) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    let (p, h) = fixture();
    let names = block_tensor_shapes(&DIMS)
        .into_iter()
        .chain(head_tensor_shapes(&DIMS));
    let datas = p.tensors().into_iter().chain(h.tensors());
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = names
        .zip(datas)
        .filter_map(|((name, shape), data)| {
            edit(name, shape, data).map(|(dt, s, b)| (name.to_string(), dt, s, b))
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, dt, s, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(d: &[f32]) -> Vec<u8> {
    d.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn block_weights_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last_block.safetensors");
    let (p, h) = fixture();
    save_block(&path, &DIMS, &p, &h).unwrap();
    let (p2, h2) = load_block(&path, &DIMS).unwrap();
    assert_eq!(p, p2);
    assert_eq!(h, h2);
    let blk = LastBlock::load(&path, DIMS).unwrap();
    assert_eq!(blk.params, p);
}

#[test]
fn block_weights_f16_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f16.safetensors");
    write_edited(&path, |_, s, d| {
        let b = d
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        Some((Dtype::F16, s, b))
    });
    let (p2, _) = load_block(&path, &DIMS).unwrap();
    let (p, _) = fixture();
    for (a, b) in p.in_proj_w.iter().zip(&p2.in_proj_w) {
        assert!(close(a, b, 1e-3 * (1.0 + a.abs()), 0.0));
    }
}

#[test]
fn block_weights_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    write_edited(&path, |n, s, d| {
        (n != "mlp.c_fc.bias").then(|| (Dtype::F32, s, f32_bytes(d)))
    });
    let err = load_block(&path, &DIMS).unwrap_err();
    assert!(
        matches!(&err, WeightsError::Missing { name, .. } if name == "mlp.c_fc.bias"),
        "{err}"
    );
    assert!(err.to_string().contains("mlp.c_fc.bias"));
}

#[test]
fn block_weights_wrong_shape_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.safetensors");
    write_edited(&path, |n, s, d| {
        let s = if n == "attn.out_proj.weight" {
            vec![4, 16]
        } else {
            s
        };
        Some((Dtype::F32, s, f32_bytes(d)))
    });
    let err = load_block(&path, &DIMS).unwrap_err();
    match &err {
        WeightsError::Shape {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "attn.out_proj.weight");
            assert_eq!(expected, &vec![8, 8]);
            assert_eq!(found, &vec![4, 16]);
        }
        other => panic!("expected a shape error, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("[4, 16]") && msg.contains("[8, 8]"), "{msg}");
}

#[test]
fn block_weights_manifest_dims_mismatch_is_a_shape_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dims.safetensors");
    let (p, h) = fixture();
    save_block(&path, &DIMS, &p, &h).unwrap();
    let wider = BlockDims { mlp: 32, ..DIMS };
    let err = load_block(&path, &wider).unwrap_err();
    assert!(
        matches!(&err, WeightsError::Shape { name, .. } if name == "mlp.c_fc.weight"),
        "{err}"
    );
}

#[test]
fn block_weights_wrong_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dtype.safetensors");
    write_edited(&path, |n, s, d| {
        if n == "ln_2.weight" {
            let b = d.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect();
            Some((Dtype::F64, s, b))
        } else {
            Some((Dtype::F32, s, f32_bytes(d)))
        }
    });
    let err = load_block(&path, &DIMS).unwrap_err();
    assert!(
        matches!(&err, WeightsError::Dtype { name, found, .. } if name == "ln_2.weight" && found == "F64"),
        "{err}"
    );
}

#[test]
fn block_weights_corrupt_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.safetensors");
    let (p, h) = fixture();
    save_block(&path, &DIMS, &p, &h).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = load_block(&path, &DIMS).unwrap_err();
    assert!(matches!(err, WeightsError::Corrupt { .. }), "{err}");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(matches!(
        load_block(&path, &DIMS).unwrap_err(),
        WeightsError::Corrupt { .. }
    ));
    let missing = dir.path().join("nope.safetensors");
    assert!(matches!(
        load_block(&missing, &DIMS).unwrap_err(),
        WeightsError::Io { .. }
    ));
}
