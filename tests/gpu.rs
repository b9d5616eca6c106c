//! The native GPU path (cargo feature `gpu`): the same labels as the CPU path, on whatever
//! adapter wgpu finds. On the CI machine that is Mesa's lavapipe (Vulkan on the CPU, about
//! 0.1 GFLOP/s), so the volume is a small crop; the numerics are the CPU tests' business.
//!
//!   cargo test --features gpu --test gpu
#![cfg(feature = "gpu")]

mod common;

use insitu::device::{self, DeviceRequest};
use insitu::engine::{start_gpu, PreparedNetwork};
use insitu::pipeline::SegmentOptions;
use std::time::Instant;

#[test]
fn gpu_labels_equal_cpu_labels_also_when_split_into_slabs() {
    let volume = common::small_crop();
    let gpu = pollster::block_on(start_gpu()).unwrap_or_else(|e| {
        panic!("{e}\nThis test needs a wgpu adapter; on Debian `apt-get install mesa-vulkan-drivers` gives lavapipe.")
    });
    eprintln!(
        "adapter: {} (max buffer {} MiB)",
        gpu.adapter,
        gpu.max_buffer_bytes >> 20
    );
    // The one device policy: auto takes a hardware GPU, and the CPU over a software adapter.
    let auto = pollster::block_on(device::choose(
        DeviceRequest::Auto,
        1 << 30,
        std::future::ready(Ok(gpu.clone())),
    ))
    .unwrap();
    assert_eq!(auto.is_gpu(), !gpu.fallback, "{:?}", auto.reason);
    assert!(auto.reason.as_ref().unwrap().contains(&gpu.adapter));

    let network = common::network("tissue_fast").unwrap();
    let run = |prepared: PreparedNetwork, max_tensor_bytes| {
        let options = SegmentOptions {
            crop_to_foreground: true,
            max_tensor_bytes,
        };
        let clock = Instant::now();
        let result =
            common::segment_volume("tissue_fast", &prepared, &volume, "48³ crop", &options);
        (result, clock.elapsed().as_secs_f64())
    };

    let (cpu, cpu_s) = run(PreparedNetwork::cpu(&network), None);
    let on_device = PreparedNetwork::gpu(&network, &gpu.device);
    // Below what one pass needs: the GPU run must go in slabs.
    let unsplit = on_device.unsplit_bytes(cpu.region, cpu.conformed.geometry.dims);
    let budget = (unsplit * 3 / 4).min(gpu.max_buffer_bytes);
    let (on_gpu, gpu_s) = run(on_device, Some(budget));
    eprintln!(
        "cpu {cpu_s:.1} s (peak {} MiB), gpu {gpu_s:.1} s in slabs (peak {} MiB)",
        cpu.peak_tensor_bytes >> 20,
        on_gpu.peak_tensor_bytes >> 20
    );
    assert!(on_gpu.peak_tensor_bytes <= budget);
    let differ = cpu
        .native
        .labels
        .iter()
        .zip(&on_gpu.native.labels)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differ,
        0,
        "{differ} of {} voxels differ between the GPU and the CPU",
        cpu.native.labels.len()
    );
    let distinct: std::collections::BTreeSet<u16> = cpu.native.labels.iter().copied().collect();
    assert!(
        distinct.len() > 1,
        "the crop must hold tissue: {distinct:?}"
    );
}
