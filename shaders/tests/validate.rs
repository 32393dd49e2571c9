//! Every kernel parses and validates with naga: no adapter needed.

use anytime_shaders::kernels;

fn validate(name: &str, source: &str) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: parse error:\n{}", e.emit_to_string(source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name}: validation error:\n{}", e.emit_to_string(source)));
    assert!(
        module
            .entry_points
            .iter()
            .all(|ep| ep.stage == naga::ShaderStage::Compute),
        "{name}: only compute entry points"
    );
}

macro_rules! validate_kernel {
    ($($kernel:ident),* $(,)?) => {
        $(
            #[test]
            fn $kernel() {
                validate(kernels::$kernel::NAME, kernels::$kernel::SOURCE);
            }
        )*
    };
}

validate_kernel!(
    adamw,
    attention_bwd,
    attention_fwd,
    col_sum,
    copy_rows,
    dense_attention_bwd,
    dense_attention_fwd,
    gather_rows,
    layer_norm_bwd,
    layer_norm_fwd,
    loss_fwd_bwd,
    matmul,
    mse_fwd_bwd,
    quick_gelu_bwd,
    quick_gelu_fwd,
);

#[test]
fn every_kernel_is_listed_and_named_after_its_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("kernels dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".wgsl").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = kernels::SOURCES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    for name in &listed {
        assert!(dir.join(format!("{name}.rs")).exists(), "{name}.rs missing");
    }
    for (name, source) in kernels::SOURCES {
        validate(name, source);
    }
}
