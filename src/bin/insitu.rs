//! `insitu`: the native command-line tool on the same core the browser runs.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use insitu::assets;
use insitu::engine::PreparedNetwork;
use insitu::models::{self, ModelEntry, ModelFiles, Registry};
use insitu::pipeline::{self, SegmentOptions, Stage};
use insitu::volume::{nifti, LabelMap, Volume};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "insitu", version, about = "Medical image segmentation that runs where the data lives")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the models in the registry.
    Models,
    /// Segment a volume with a model and write the label map as NIfTI.
    Segment {
        /// Model id (see `insitu models`).
        #[arg(long, short)]
        model: Option<String>,
        /// Input volume (NIfTI .nii or .nii.gz).
        input: PathBuf,
        /// Output label map (.nii.gz or .nii).
        #[arg(long, short)]
        output: PathBuf,
        /// `native`: on the input's own grid, overlaying the original file.
        /// `conformed`: on the model's 256³ 1 mm grid, as brainchop's CLI writes it.
        #[arg(long, value_enum, default_value_t = Space::Native)]
        space: Space,
        /// Run the network only on the head's bounding box (faster; what the web page does by default).
        #[arg(long)]
        crop: bool,
        /// Compute device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
        device: DeviceChoice,
    },
    /// Print a volume's geometry.
    Info {
        input: PathBuf,
    },
    /// Convert a volume to NIfTI, optionally cropping it.
    Convert {
        input: PathBuf,
        #[arg(long, short)]
        output: PathBuf,
        /// Keep only the box `i0,j0,k0,ni,nj,nk` (voxel indices and sizes).
        #[arg(long, value_parser = parse_box)]
        crop: Option<[usize; 6]>,
    },
    /// Copy (or download) the registry's model and sample files into a directory, verified by sha256.
    Fetch {
        /// Destination; files land in <dest>/models/... and <dest>/data/...
        #[arg(long)]
        dest: PathBuf,
        /// Only these models (default: all).
        #[arg(long = "model")]
        models: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Space {
    Native,
    Conformed,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DeviceChoice {
    /// burn's flex CPU backend.
    Cpu,
    /// wgpu (Vulkan/Metal/DX12); needs a build with `--features gpu`.
    Gpu,
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("insitu: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Models => list_models(),
        Command::Segment { model, input, output, space, crop, device } => {
            segment(model, &input, &output, space, crop, device)
        }
        Command::Info { input } => info(&input),
        Command::Convert { input, output, crop } => convert(&input, &output, crop),
        Command::Fetch { dest, models } => fetch(&dest, &models),
    }
}

fn list_models() -> Result<()> {
    let registry = Registry::builtin();
    for entry in registry.models() {
        let bytes: u64 = entry.files.iter().map(|f| f.bytes).sum();
        println!(
            "{:<14} {:<28} {:<22} {:>7} params {:>6} KiB{}",
            entry.id,
            entry.name,
            entry.task,
            entry.parameters,
            bytes / 1024,
            if entry.default { "  (default)" } else { "" }
        );
    }
    Ok(())
}

fn read_input(path: &Path) -> Result<Volume> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("{name}: cannot read"))?;
    Ok(pipeline::read_volume(&bytes, &name)?)
}

fn model_files(entry: &ModelEntry) -> Result<ModelFiles> {
    let mut files = ModelFiles::new();
    for file in &entry.files {
        let bytes = assets::fetch(assets::RemoteFile {
            collection: "models",
            path: &file.path,
            url: &file.url,
            sha256: &file.sha256,
        })?;
        files.insert(file.name.clone(), bytes);
    }
    Ok(files)
}

fn device(choice: DeviceChoice) -> Result<burn::tensor::Device> {
    match choice {
        DeviceChoice::Cpu => Ok(burn::tensor::Device::flex()),
        #[cfg(feature = "gpu")]
        DeviceChoice::Gpu => Ok(burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "gpu"))]
        DeviceChoice::Gpu => bail!("this build has no GPU support; rebuild with `cargo build --release --features gpu`"),
    }
}

fn segment(
    model: Option<String>,
    input: &Path,
    output: &Path,
    space: Space,
    crop: bool,
    choice: DeviceChoice,
) -> Result<()> {
    let registry = Registry::builtin();
    let entry = match &model {
        Some(id) => registry.get(id)?,
        None => registry.default_model(),
    };
    let volume = read_input(input)?;
    let network = models::load_network(&model_files(entry)?)
        .with_context(|| format!("model {}", entry.id))?;
    let device = device(choice)?;
    let prepared = PreparedNetwork::new(&network, &device);
    let options = SegmentOptions { crop_to_foreground: crop, max_tensor_bytes: None };
    let clock = Instant::now();
    let now = || clock.elapsed().as_secs_f64() * 1000.0;
    let mut progress = |stage: Stage| {
        let text = match stage {
            Stage::Layer { done, total } => format!("\rlayer {done}/{total}   "),
            other => format!("\r{:<14}", other.name()),
        };
        eprint!("{text}");
        let _ = std::io::stderr().flush();
    };
    let name = input.display().to_string();
    let result = pollster::block_on(pipeline::segment(
        &volume,
        &name,
        entry.input.normalization,
        &prepared,
        &options,
        &now,
        &mut progress,
    ))?;
    eprintln!(
        "\r{} on {}: conform {:.0} ms, inference {:.0} ms, native {:.0} ms, total {:.0} ms",
        entry.id,
        if choice == DeviceChoice::Cpu { "cpu" } else { "gpu" },
        result.timings.conform,
        result.timings.inference,
        result.timings.native,
        result.timings.total
    );
    let labels = match space {
        Space::Native => &result.native,
        Space::Conformed => &result.conformed,
    };
    write_labels(labels, output)
}

fn write_labels(labels: &LabelMap, output: &Path) -> Result<()> {
    let gzip = output.extension().is_some_and(|e| e == "gz");
    std::fs::write(output, nifti::write_labels(labels, gzip))
        .with_context(|| format!("{}: cannot write", output.display()))
}

fn info(input: &Path) -> Result<()> {
    let volume = read_input(input)?;
    let g = &volume.geometry;
    println!("dims        {} x {} x {}", g.dims[0], g.dims[1], g.dims[2]);
    println!("spacing     {:.4} x {:.4} x {:.4} mm", g.spacing[0], g.spacing[1], g.spacing[2]);
    println!("orientation {}", g.orientation_code());
    for row in &g.affine {
        println!("affine      {:>10.4} {:>10.4} {:>10.4} {:>10.4}", row[0], row[1], row[2], row[3]);
    }
    Ok(())
}

fn parse_box(text: &str) -> Result<[usize; 6], String> {
    let values: Vec<usize> = text
        .split(',')
        .map(|v| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    values.try_into().map_err(|_| "expected six numbers: i0,j0,k0,ni,nj,nk".to_string())
}

fn convert(input: &Path, output: &Path, crop: Option<[usize; 6]>) -> Result<()> {
    let mut volume = read_input(input)?;
    if let Some(b) = crop {
        volume = insitu::volume::crop(&volume, [b[0], b[1], b[2]], [b[3], b[4], b[5]])
            .map_err(|e| anyhow!("{}: {e}", input.display()))?;
    }
    let gzip = output.extension().is_some_and(|e| e == "gz");
    std::fs::write(output, nifti::write_volume(&volume, gzip))
        .with_context(|| format!("{}: cannot write", output.display()))
}

fn fetch(dest: &Path, only: &[String]) -> Result<()> {
    let registry = Registry::builtin();
    for id in only {
        registry.get(id)?;
    }
    for entry in registry.models().iter().filter(|m| only.is_empty() || only.contains(&m.id)) {
        for file in &entry.files {
            let path = assets::stage(
                assets::RemoteFile { collection: "models", path: &file.path, url: &file.url, sha256: &file.sha256 },
                dest,
            )?;
            println!("{}", path.display());
        }
    }
    for sample in registry.samples() {
        let path = assets::stage(
            assets::RemoteFile { collection: "data", path: &sample.path, url: &sample.url, sha256: &sample.sha256 },
            dest,
        )?;
        println!("{}", path.display());
    }
    Ok(())
}
