//! `insitu`: the native command-line tool on the same core the browser runs.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use insitu::assets;
use insitu::device::{self, DeviceChoice, DeviceRequest};
use insitu::metrics::{self, EvalOptions, LabelMapping, Report};
use insitu::models::{self, ModelEntry, ModelFiles, Registry};
use insitu::pipeline::Stage;
use insitu::run::{self, DenseModel, DenseRun, Prepared};
use insitu::volume::{self, nifti, Format, LabelMap, Opened, Volume};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "insitu",
    version,
    about = "Medical image segmentation that runs where the data lives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Memory the CPU path may hold for activations, in MiB; larger volumes run in slabs
    /// (default: half the machine's RAM).
    #[arg(long, global = true, value_name = "MiB")]
    max_memory: Option<usize>,
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
        #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
        device: DeviceArg,
        /// Write the labels in the input's own format (NRRD, MGH/MGZ, MetaImage) instead of NIfTI.
        #[arg(long)]
        like_input: bool,
        /// DICOM directory with several series: the SeriesInstanceUID to segment.
        #[arg(long)]
        series: Option<String>,
        /// Of an input holding several 3-D volumes (4-D NIfTI, fMRI/DWI/multi-echo DICOM):
        /// the one to use, from 0 (default 0; `insitu info` lists them).
        #[arg(long, value_name = "N")]
        volume: Option<usize>,
    },
    /// Segment what boxes point at with a promptable model (LiteMedSAM) and write the label
    /// map (NIfTI) on the input's grid.
    #[command(after_long_help = PROMPT_HELP)]
    Prompt(PromptArgs),
    /// Print a volume's geometry (NIfTI, NRRD, MGH/MGZ, MetaImage, a DICOM file or directory).
    Info {
        input: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// DICOM directory with several series: the SeriesInstanceUID to show.
        #[arg(long)]
        series: Option<String>,
        /// Of an input holding several 3-D volumes (4-D NIfTI, fMRI/DWI/multi-echo DICOM):
        /// the one to use, from 0 (default 0; `insitu info` lists them).
        #[arg(long, value_name = "N")]
        volume: Option<usize>,
    },
    /// Convert a volume to NIfTI, optionally cropping it.
    Convert {
        input: PathBuf,
        #[arg(long, short)]
        output: PathBuf,
        /// Keep only the box `i0,j0,k0,ni,nj,nk` (voxel indices and sizes).
        #[arg(long, value_parser = parse_box)]
        crop: Option<[usize; 6]>,
        /// DICOM directory with several series: the SeriesInstanceUID to convert.
        #[arg(long)]
        series: Option<String>,
        /// Of an input holding several 3-D volumes (4-D NIfTI, fMRI/DWI/multi-echo DICOM):
        /// the one to use, from 0 (default 0; `insitu info` lists them).
        #[arg(long, value_name = "N")]
        volume: Option<usize>,
    },
    /// Evaluate a segmentation against reference labels (Dice, IoU, HD95, ASSD, NSD, volumes),
    /// or a model over a cohort: `--model ID --images DIR --labels DIR -o report.csv`.
    Eval {
        /// Predicted label map.
        #[arg(long, required_unless_present = "model", conflicts_with_all = ["images", "labels_dir"])]
        pred: Option<PathBuf>,
        /// Reference label map.
        #[arg(long = "ref", required_unless_present = "model")]
        reference: Option<PathBuf>,
        /// Label mapping: a JSON file `{"name", "pairs": [{"model", "reference": [..], "name"}]}` or a preset
        /// (freesurfer_to_tissue_fast, freesurfer_to_subcortical).
        #[arg(long)]
        map: Option<String>,
        /// NSD tolerance in mm.
        #[arg(long, default_value_t = insitu::metrics::DEFAULT_TOLERANCE_MM)]
        tolerance_mm: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Cohort mode: segment every image with this model and evaluate it.
        #[arg(long, requires_all = ["images", "labels_dir", "output"])]
        model: Option<String>,
        /// Cohort mode: directory of input volumes.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Cohort mode: directory of reference label maps, matched to images by file name.
        #[arg(long = "labels")]
        labels_dir: Option<PathBuf>,
        /// Cohort mode: CSV report.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Cohort mode: run the network on the head's bounding box only.
        #[arg(long)]
        crop: bool,
    },
    /// Time every layer of a model on a synthetic cube and print its GFLOP/s (the kernels
    /// alone, no conform or post-processing).
    BenchKernels {
        /// Model id (see `insitu models`).
        #[arg(long, short)]
        model: Option<String>,
        /// Edge of the cubic test volume, in voxels.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Runs; the table shows each layer's median.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Compute device.
        #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
        device: DeviceArg,
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
enum ModalityArg {
    /// Hounsfield units, windowed with --ct-window.
    Ct,
    /// 0.5 / 99.5 % percentiles of the non-zero voxels.
    Mr,
}

/// `insitu prompt`'s arguments.
#[derive(clap::Args)]
struct PromptArgs {
    /// Promptable model id (see `insitu models`).
    #[arg(long, short, default_value = "litemedsam")]
    model: String,
    /// Input volume (NIfTI, NRRD, MGH/MGZ, MetaImage, a DICOM file or directory).
    input: PathBuf,
    /// A 2-D box `I0,J0,I1,J1@K` on slice K (inclusive voxel indices). Repeatable.
    #[arg(long = "box", value_name = "I0,J0,I1,J1@K", value_parser = parse_box2d)]
    boxes: Vec<[usize; 5]>,
    /// A 3-D box `I0,J0,K0,I1,J1,K1` (K0 < K1), propagated from its middle slice as the
    /// reference does; its end slices K0 and K1 stay empty. Repeatable.
    #[arg(long = "box3d", value_name = "I0,J0,K0,I1,J1,K1", value_parser = parse_box3d)]
    boxes3d: Vec<[usize; 6]>,
    /// The label of each prompt, in command-line order (default 1, 2, 3, ...).
    #[arg(long = "label", value_name = "N")]
    labels: Vec<u16>,
    /// Reference labels on the input's grid: prompt every label with its bounding box(es),
    /// labelled with its own value (see --protocol), instead of --box/--box3d, so that the
    /// output can be compared with the reference by `insitu eval` directly.
    #[arg(long, value_name = "LABELS", conflicts_with_all = ["boxes", "boxes3d", "labels"])]
    boxes_from: Option<PathBuf>,
    /// With --boxes-from: a 2-D box on every slice each label is on (`per-slice`), or each
    /// label's 3-D box, propagated (`3d`).
    #[arg(long, value_enum, default_value_t = ProtocolArg::PerSlice, requires = "boxes_from")]
    protocol: ProtocolArg,
    /// How the intensities are read (default: guessed, CT when the minimum is below -500).
    #[arg(long, value_enum)]
    modality: Option<ModalityArg>,
    /// CT window `LEVEL,WIDTH` in Hounsfield units.
    #[arg(long, value_name = "LEVEL,WIDTH", value_parser = parse_window, default_value = "40,400")]
    ct_window: (f64, f64),
    /// Output label map (.nii.gz or .nii).
    #[arg(long, short)]
    output: PathBuf,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// DICOM directory with several series: the SeriesInstanceUID to segment.
    #[arg(long)]
    series: Option<String>,
    /// Of an input holding several 3-D volumes (4-D NIfTI, fMRI/DWI/multi-echo DICOM):
    /// the one to use, from 0 (default 0; `insitu info` lists them).
    #[arg(long, value_name = "N")]
    volume: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    PerSlice,
    #[value(name = "3d")]
    Box3d,
}

const PROMPT_HELP: &str = "\
Conventions (those of the LiteMedSAM reference, CVPR24_LiteMedSAM_infer.py, which reads the
file's voxel array without reorientation):
  - voxel indices are 0-based and inclusive: I along the file's first array axis, J the
    second, K the third; a slice is a plane of constant K (rows J, columns I);
  - --box I0,J0,I1,J1@K: a box on slice K (the reference's [x_min, y_min, x_max, y_max]);
  - --box3d I0,J0,K0,I1,J1,K1: the middle slice int((K1 - K0) / 2 + K0) with the box, then
    outwards up to K1 - 1 and down to K0 + 1, each slice's box taken from its neighbour's
    mask (grown by 3 px in the 256 frame), the first box again where that mask is empty. As
    in the reference, the end slices K0 and K1 are left empty;
  - prompts are taken in command-line order (--box and --box3d mixed); the n-th --label is the
    n-th prompt's label (default: 1, 2, 3, ...); where masks overlap, the later prompt wins;
  - modality: CT (window --ct-window, default level 40 / width 400) or MR (0.5 / 99.5 %
    percentiles of the non-zero voxels), applied to the whole volume; without --modality it is
    guessed: CT when the minimum intensity is below -500 (Hounsfield units), else MR. The
    output says which was used and whether it was guessed;
  - each slice is encoded once per run, however many boxes use it; times are printed per slice
    (encoder, decoder);
  - --boxes-from LABELS prompts with reference labels instead (the CVPR 2024 MedSAM-on-laptop
    protocol): each label's bounding box on every slice it is on (--protocol per-slice), or
    its 3-D bounding box (--protocol 3d), labelled with its own value, so that
    `insitu eval --pred OUT --ref LABELS` compares them label for label.
The label map is written on the input's own grid (same dimensions and affine).

Example: insitu prompt ct.nii.gz --box 45,26,104,84@15 --box3d 23,27,0,44,49,22 --label 5 \
  --label 3 -o labels.nii.gz";

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Space {
    Native,
    Conformed,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DeviceArg {
    /// A hardware GPU when there is one, else the CPU (a software adapter such as lavapipe
    /// loses to the CPU kernels); the run says which and why.
    Auto,
    /// insitu's own CPU kernels (AVX2 where the CPU has it), on every core.
    Cpu,
    /// wgpu (Vulkan/Metal/DX12), whatever adapter it finds; needs a build with `--features gpu`.
    Gpu,
}

impl DeviceArg {
    fn request(self) -> DeviceRequest {
        match self {
            DeviceArg::Auto => DeviceRequest::Auto,
            DeviceArg::Cpu => DeviceRequest::Cpu,
            DeviceArg::Gpu => DeviceRequest::Gpu,
        }
    }
}

/// `println!` that returns an error instead of panicking when stdout is closed (`| head`).
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        // A reader that stopped reading (`insitu info x | head -1`) is not a failure.
        let closed = error.chain().any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if closed {
            return;
        }
        eprintln!("insitu: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let budget = cli
        .max_memory
        .map_or_else(default_memory_budget, |mib| mib << 20);
    match cli.command {
        Command::Models => list_models(),
        Command::Segment {
            model,
            input,
            output,
            space,
            crop,
            device,
            like_input,
            series,
            volume,
        } => segment(
            model,
            &input,
            &output,
            space,
            crop,
            device,
            like_input,
            (series.as_deref(), volume),
            budget,
        ),
        Command::Prompt(args) => prompt(&args, budget),
        Command::Info {
            input,
            json,
            series,
            volume,
        } => info(&input, json, series.as_deref(), volume),
        Command::Convert {
            input,
            output,
            crop,
            series,
            volume,
        } => convert(&input, &output, crop, series.as_deref(), volume),
        Command::Fetch { dest, models } => fetch(&dest, &models),
        Command::BenchKernels {
            model,
            size,
            repeat,
            device,
        } => bench_kernels(model, size, repeat.max(1), device, budget),
        Command::Eval {
            pred,
            reference,
            map,
            tolerance_mm,
            json,
            model,
            images,
            labels_dir,
            output,
            crop,
        } => {
            let mapping = map.as_deref().map(load_mapping).transpose()?;
            let options = EvalOptions {
                tolerance_mm,
                labels: None,
            };
            match (model, images, labels_dir, output) {
                (Some(model), Some(images), Some(labels), Some(output)) => eval_cohort(
                    &model,
                    &images,
                    &labels,
                    &output,
                    mapping.as_ref(),
                    &options,
                    crop,
                    budget,
                ),
                _ => eval_pair(
                    pred.as_deref()
                        .ok_or_else(|| anyhow!("--pred is required"))?,
                    reference
                        .as_deref()
                        .ok_or_else(|| anyhow!("--ref is required"))?,
                    mapping.as_ref(),
                    &options,
                    json,
                ),
            }
        }
    }
}

fn bench_kernels(
    model: Option<String>,
    size: usize,
    repeat: usize,
    device: DeviceArg,
    budget: usize,
) -> Result<()> {
    let entry = dense_model(model.as_deref())?;
    let (model, prepared) = prepare_model(entry, device, budget)?;
    let network = &model.network;
    let dims = [size; 3];
    // Reproducible noise in [0, 1): every voxel busy, as in a head.
    let mut state = 0x2545_f491_u32;
    let input: Vec<f32> = (0..size.pow(3))
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32
        })
        .collect();
    let mut times = vec![Vec::new(); network.layers.len()];
    for _ in 0..repeat {
        let mut last = Instant::now();
        let mut finished = Vec::new();
        pollster::block_on(prepared.network.segment(
            &input,
            dims,
            insitu::engine::OutputBox::whole(dims),
            Some(prepared.device.memory_budget),
            &mut |_| {
                finished.push(last.elapsed().as_secs_f64());
                last = Instant::now();
            },
        ))
        .map_err(|e| anyhow!(e))?;
        // With slabs, layer n is every `layers`-th report: sum them for one run's time.
        let mut run = vec![0.0; network.layers.len()];
        for (n, t) in finished.iter().enumerate() {
            run[n % network.layers.len()] += t;
        }
        for (layer, t) in times.iter_mut().zip(run) {
            layer.push(t);
        }
    }
    out!(
        "{} on {}, {size}^3 voxels, median of {repeat} run(s)",
        entry.id,
        prepared.device.describe()
    );
    out!("layer  in -> out  kernel  dilation      ms   GFLOP/s");
    let (mut total_s, mut total_flops) = (0.0, 0.0);
    for (n, (layer, t)) in network.layers.iter().zip(&mut times).enumerate() {
        t.sort_by(f64::total_cmp);
        let seconds = t[t.len() / 2];
        let flops = 2.0
            * size.pow(3) as f64
            * (layer.in_channels * layer.out_channels * layer.kernel_size.pow(3)) as f64;
        total_s += seconds;
        total_flops += flops;
        out!(
            "{n:>5}  {:>3} -> {:<3}  {k}x{k}x{k}   {:>8}  {:>6.0}  {:>8.2}",
            layer.in_channels,
            layer.out_channels,
            layer.dilation,
            seconds * 1e3,
            flops / seconds / 1e9,
            k = layer.kernel_size,
        );
    }
    out!(
        "total                            {:>6.0}  {:>8.2}",
        total_s * 1e3,
        total_flops / total_s / 1e9
    );
    Ok(())
}

fn list_models() -> Result<()> {
    let registry = Registry::builtin();
    for entry in registry.models() {
        let bytes: u64 = entry.files.iter().map(|f| f.bytes).sum();
        out!(
            "{:<14} {:<28} {:<22} {:>7} params {:>6} KiB{}",
            entry.id,
            entry.name,
            entry.task,
            entry.parameters,
            bytes / 1024,
            if entry.default { "  (default)" } else { "" }
        );
        let card = &entry.card;
        out!(
            "{:<14} {}: {}, {}; input: {}",
            "",
            card.kind.name(),
            card.modality,
            card.body_region,
            card.expected_input
        );
    }
    Ok(())
}

/// Says on stderr where `volume` does not fit what `entry`'s card accepts; the run goes on.
fn warn_fit(entry: &ModelEntry, volume: &Volume, input: &Path) {
    for warning in models::fit::warnings(entry, volume, &input.display().to_string()) {
        eprintln!("warning: {warning}");
    }
}

/// Refuses a promptable model where a dense one is needed.
/// The registry's model `id` (default: the default model), which must be a dense one.
fn dense_model(id: Option<&str>) -> Result<&'static ModelEntry> {
    let registry = Registry::builtin();
    let entry = match id {
        Some(id) => registry.get(id)?,
        None => registry.default_model(),
    };
    require_dense(entry)?;
    Ok(entry)
}

fn require_dense(entry: &ModelEntry) -> Result<()> {
    if entry.is_promptable() {
        bail!(
            "{} is promptable: use insitu prompt (see insitu prompt --help)",
            entry.id
        );
    }
    Ok(())
}

fn read_input(path: &Path) -> Result<Volume> {
    Ok(read_input_as(path, None, None)?.0)
}

/// Files under `dir`, descending at most `depth` folders (DICOM exports nest series folders).
fn list_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if path.is_dir() && depth > 0 {
            list_files(&path, depth - 1, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a volume file, a `.mhd`/`.nhdr` header with its data file beside it, or a DICOM
/// directory (`series` picks one when it holds several; `volume` one of a 4-D input's volumes,
/// default the first, which is then said on stderr).
fn read_input_as(
    path: &Path,
    series: Option<&str>,
    volume: Option<usize>,
) -> Result<(Volume, Format)> {
    let opened = open_input(path, series, volume)?;
    if volume.is_none() && opened.volumes.len() > 1 {
        eprintln!(
            "insitu: {}: holds {} volumes; using volume 0 ({}); pick another with --volume N \
             (insitu info lists them)",
            path.display(),
            opened.volumes.len(),
            opened.volumes[0].description
        );
    }
    Ok((opened.volume, opened.format))
}

/// Opens an input as [`read_input_as`] does, with the list of the volumes it holds.
fn open_input(
    path: &Path,
    series: Option<&str>,
    volume: Option<usize>,
) -> Result<volume::OpenedVolume> {
    let name = path.display().to_string();
    let mut files = Vec::new();
    if path.is_dir() {
        let mut entries = Vec::new();
        list_files(path, 3, &mut entries).with_context(|| format!("{name}: cannot list"))?;
        entries.sort();
        for entry in entries {
            let bytes = std::fs::read(&entry)
                .with_context(|| format!("{}: cannot read", entry.display()))?;
            files.push((entry.display().to_string(), bytes));
        }
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("{name}: cannot read"))?;
        files.push((name.clone(), bytes));
        // A detached header names its data file; bring the folder's other files along.
        if name.ends_with(".mhd") || name.ends_with(".nhdr") {
            if let Some(dir) = path.parent() {
                let header = String::from_utf8_lossy(&files[0].1).into_owned();
                for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    let p = entry.path();
                    if p != path
                        && p.is_file()
                        && p.metadata().is_ok_and(|m| m.len() < (4u64 << 30))
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| header.contains(n))
                    {
                        files.push((p.display().to_string(), std::fs::read(&p)?));
                    }
                }
            }
        }
    }
    match volume::open_files(&files, series, volume).map_err(|e| anyhow!("{name}: {e}"))? {
        Opened::Volume(opened) => {
            if !opened.skipped.is_empty() {
                eprintln!(
                    "insitu: {name}: skipped {} file(s) that are not part of the volume",
                    opened.skipped.len()
                );
            }
            Ok(opened)
        }
        Opened::Series(list) => {
            let lines: Vec<String> = list
                .series
                .iter()
                .map(|s| {
                    let volumes = match s.volumes.len() {
                        0 | 1 => String::new(),
                        n => format!(", {n} volumes"),
                    };
                    format!(
                        "  {}  {} {} ({} files, {:?}{volumes})",
                        s.uid,
                        s.modality,
                        s.description,
                        s.files.len(),
                        s.dims
                    )
                })
                .collect();
            bail!(
                "{name}: holds {} DICOM series; pick one with --series UID:\n{}",
                list.series.len(),
                lines.join("\n")
            )
        }
    }
}

fn model_files(entry: &ModelEntry) -> Result<ModelFiles> {
    let mut files = ModelFiles::new();
    for file in &entry.files {
        let bytes = assets::fetch(assets::RemoteFile::model(file))?;
        files.insert(file.name.clone(), bytes);
    }
    Ok(files)
}

/// Half the machine's RAM (from /proc/meminfo), or 4 GiB where that cannot be read.
fn default_memory_budget() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        });
    total_kib.map_or(4 << 30, |kib| kib * 1024 / 2)
}

/// The device the one policy ([`device::choose`]) picks; auto's reason goes to stderr.
fn choose_device(arg: DeviceArg, budget: usize) -> Result<DeviceChoice> {
    let choice = pollster::block_on(device::choose(arg.request(), budget, device::start_gpu()))
        .map_err(|e| anyhow!(e))?;
    if let Some(why) = &choice.reason {
        eprintln!("{why}");
    }
    Ok(choice)
}

/// A dense model, checked and loaded, ready on the chosen device.
fn prepare_model(
    entry: &ModelEntry,
    device: DeviceArg,
    budget: usize,
) -> Result<(DenseModel, Prepared)> {
    let model = DenseModel::load(&entry.id, &model_files(entry)?)?;
    let prepared = Prepared::new(&model, choose_device(device, budget)?);
    Ok((model, prepared))
}

#[allow(clippy::too_many_arguments)]
fn segment(
    model: Option<String>,
    input: &Path,
    output: &Path,
    space: Space,
    crop: bool,
    device: DeviceArg,
    like_input: bool,
    (series, volume): (Option<&str>, Option<usize>),
    budget: usize,
) -> Result<()> {
    let entry = dense_model(model.as_deref())?;
    let (volume, format) = read_input_as(input, series, volume)?;
    warn_fit(entry, &volume, input);
    let (model, prepared) = prepare_model(entry, device, budget)?;
    let run = run_model(
        &model,
        &prepared,
        budget,
        &volume,
        &input.display().to_string(),
        crop,
    )?;
    let result = &run.segmentation;
    eprintln!(
        "\r{} on {}: conform {:.0} ms, inference {:.0} ms, native {:.0} ms, total {:.0} ms",
        entry.id,
        run.device.describe(),
        result.timings.conform,
        result.timings.inference,
        result.timings.native,
        result.timings.total
    );
    let labels = match space {
        Space::Native => &result.native,
        Space::Conformed => &result.conformed,
    };
    if like_input && space == Space::Native {
        return std::fs::write(output, volume::write_labels_like(format, labels))
            .with_context(|| format!("{}: cannot write", output.display()));
    }
    write_labels(labels, output)
}

/// Runs the whole pipeline ([`run::segment`]) with a progress line on stderr.
fn run_model(
    model: &DenseModel,
    prepared: &Prepared,
    cpu_budget: usize,
    volume: &Volume,
    name: &str,
    crop: bool,
) -> Result<DenseRun> {
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
    let run = pollster::block_on(run::segment(
        model,
        prepared,
        cpu_budget,
        volume,
        name,
        crop,
        &now,
        &mut progress,
    ))?;
    if let Some(why) = &run.fallback {
        eprintln!("\r{why}");
    }
    Ok(run)
}

fn read_labels(path: &Path) -> Result<LabelMap> {
    let volume = read_input(path)?;
    LabelMap::from_volume(&volume).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn load_mapping(spec: &str) -> Result<LabelMapping> {
    if let Some(mapping) = metrics::preset(spec) {
        return Ok(mapping);
    }
    let text = std::fs::read_to_string(spec).with_context(|| {
        format!(
            "{spec}: neither a preset ({}) nor a readable file",
            preset_names()
        )
    })?;
    LabelMapping::from_json(&text).map_err(|e| anyhow!("{spec}: {e}"))
}

fn preset_names() -> String {
    metrics::presets()
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

fn eval_pair(
    pred: &Path,
    reference: &Path,
    mapping: Option<&LabelMapping>,
    options: &EvalOptions,
    json: bool,
) -> Result<()> {
    let report = metrics::evaluate(
        &read_labels(pred)?,
        &read_labels(reference)?,
        mapping,
        options,
    )
    .with_context(|| format!("{} vs {}", pred.display(), reference.display()))?;
    if json {
        out!("{}", report.to_json());
    } else {
        print_table(&report)?;
    }
    Ok(())
}

fn print_table(report: &Report) -> Result<()> {
    let f = |v: f64| {
        if v.is_finite() {
            format!("{v:.4}")
        } else {
            "inf".into()
        }
    };
    out!(
        "{:>6} {:<24} {:>7} {:>7} {:>9} {:>9} {:>7} {:>10} {:>10}",
        "label",
        "name",
        "dice",
        "iou",
        "hd95_mm",
        "assd_mm",
        "nsd",
        "pred_ml",
        "ref_ml"
    );
    for m in &report.labels {
        out!(
            "{:>6} {:<24} {:>7} {:>7} {:>9} {:>9} {:>7} {:>10.3} {:>10.3}",
            m.label,
            m.name.as_deref().unwrap_or(""),
            f(m.dice),
            f(m.iou),
            f(m.hd95),
            f(m.assd),
            f(m.nsd),
            m.vol_pred_ml,
            m.vol_ref_ml
        );
    }
    let o = |v: Option<f64>| v.map(f).unwrap_or_else(|| "-".into());
    let mean = &report.mean;
    out!(
        "{:>6} {:<24} {:>7} {:>7} {:>9} {:>9} {:>7}   (NSD at {} mm)",
        "mean",
        "",
        o(mean.dice),
        o(mean.iou),
        o(mean.hd95),
        o(mean.assd),
        o(mean.nsd),
        report.tolerance_mm
    );
    Ok(())
}

/// The reference label file for `image`: same file name, or same stem with any volume extension.
fn matching_label(image: &Path, labels: &Path) -> Option<PathBuf> {
    let name = image.file_name()?.to_str()?;
    let stem = volume_stem(name);
    let exact = labels.join(name);
    if exact.is_file() {
        return Some(exact);
    }
    std::fs::read_dir(labels)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| volume_stem(n) == stem)
        })
}

fn volume_stem(name: &str) -> &str {
    [
        ".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd",
    ]
    .iter()
    .find_map(|ext| name.strip_suffix(ext))
    .unwrap_or(name)
}

fn eval_cohort(
    model: &str,
    images: &Path,
    labels: &Path,
    output: &Path,
    mapping: Option<&LabelMapping>,
    options: &EvalOptions,
    crop: bool,
    budget: usize,
) -> Result<()> {
    let registry = Registry::builtin();
    let entry = registry.get(model)?;
    require_dense(entry)?;
    let mut cases: Vec<PathBuf> = std::fs::read_dir(images)
        .with_context(|| format!("{}: cannot list", images.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    cases.sort();
    if cases.is_empty() {
        bail!("{}: no images", images.display());
    }
    let (model, prepared) = prepare_model(entry, DeviceArg::Auto, budget)?;
    let mut csv = String::new();
    for (n, image) in cases.iter().enumerate() {
        let case = image
            .file_name()
            .and_then(|n| n.to_str())
            .map(volume_stem)
            .unwrap_or("?")
            .to_string();
        eprintln!("[{}/{}] {case}", n + 1, cases.len());
        let reference = matching_label(image, labels).ok_or_else(|| {
            anyhow!(
                "{}: no label file for it in {}",
                image.display(),
                labels.display()
            )
        })?;
        let volume = read_input(image)?;
        warn_fit(entry, &volume, image);
        let run = run_model(
            &model,
            &prepared,
            budget,
            &volume,
            &image.display().to_string(),
            crop,
        )?;
        let result = &run.segmentation;
        let mut report =
            metrics::evaluate(&result.native, &read_labels(&reference)?, mapping, options)
                .with_context(|| format!("{} vs {}", image.display(), reference.display()))?;
        for m in &mut report.labels {
            if m.name.is_none() {
                m.name = entry
                    .labels
                    .iter()
                    .find(|l| l.value == m.label)
                    .map(|l| l.name.clone());
            }
        }
        let table = report.to_csv();
        let mut lines = table.lines();
        let header = lines.next().unwrap_or_default();
        if n == 0 {
            csv.push_str(&format!("case,model,runtime_ms,{header}\n"));
        }
        for line in lines {
            csv.push_str(&format!(
                "{},{},{:.0},{line}\n",
                case, entry.id, result.timings.total
            ));
        }
    }
    std::fs::write(output, csv).with_context(|| format!("{}: cannot write", output.display()))?;
    eprintln!("wrote {}", output.display());
    Ok(())
}

fn write_labels(labels: &LabelMap, output: &Path) -> Result<()> {
    let gzip = output.extension().is_some_and(|e| e == "gz");
    std::fs::write(output, nifti::write_labels(labels, gzip))
        .with_context(|| format!("{}: cannot write", output.display()))
}

fn info(input: &Path, json: bool, series: Option<&str>, volume: Option<usize>) -> Result<()> {
    let opened = open_input(input, series, volume)?;
    let (volume, format) = (&opened.volume, opened.format);
    let g = &volume.geometry;
    let (min, max) = volume
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if json {
        let info = serde_json::json!({
            "format": format!("{format:?}"),
            "dims": g.dims,
            "spacing_mm": g.spacing,
            "orientation": g.orientation_code(),
            "affine": g.affine,
            "min": min,
            "max": max,
            "volume": opened.chosen,
            "volumes": opened.volumes,
        });
        out!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    out!("format      {format:?}");
    out!("range       {min} .. {max}");
    out!("dims        {} x {} x {}", g.dims[0], g.dims[1], g.dims[2]);
    out!(
        "spacing     {:.4} x {:.4} x {:.4} mm",
        g.spacing[0],
        g.spacing[1],
        g.spacing[2]
    );
    out!("orientation {}", g.orientation_code());
    for row in &g.affine {
        out!(
            "affine      {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
    if opened.volumes.len() > 1 {
        out!(
            "volumes     {} (this is volume {}; choose with --volume N)",
            opened.volumes.len(),
            opened.chosen
        );
        for v in &opened.volumes {
            out!("  {:>4}  {}", v.index, v.description);
        }
    }
    Ok(())
}

/// `N` comma-separated voxel indices; `expected` says what was wanted when the count is wrong.
fn parse_indices<const N: usize>(text: &str, expected: &str) -> Result<[usize; N], String> {
    let values: Vec<usize> = text
        .split(',')
        .map(|v| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    values.try_into().map_err(|_| expected.to_string())
}

fn parse_box(text: &str) -> Result<[usize; 6], String> {
    parse_indices(text, "expected six numbers: i0,j0,k0,ni,nj,nk")
}

fn convert(
    input: &Path,
    output: &Path,
    crop: Option<[usize; 6]>,
    series: Option<&str>,
    volume: Option<usize>,
) -> Result<()> {
    let mut volume = read_input_as(input, series, volume)?.0;
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
    for entry in registry
        .models()
        .iter()
        .filter(|m| only.is_empty() || only.contains(&m.id))
    {
        for file in &entry.files {
            let path = assets::stage(assets::RemoteFile::model(file), dest)?;
            out!("{}", path.display());
        }
    }
    for sample in registry.samples() {
        let path = assets::stage(
            assets::RemoteFile {
                collection: "data",
                path: &sample.path,
                url: &sample.url,
                sha256: &sample.sha256,
                archive: None,
            },
            dest,
        )?;
        out!("{}", path.display());
    }
    Ok(())
}

/// `I0,J0,I1,J1@K` as `[i0, j0, i1, j1, k]`.
fn parse_box2d(text: &str) -> Result<[usize; 5], String> {
    let usage = || format!("{text:?}: expected I0,J0,I1,J1@K (inclusive voxel indices)");
    let (ij, k) = text.split_once('@').ok_or_else(usage)?;
    let [i0, j0, i1, j1] = parse_indices(ij, &usage())?;
    let k = k
        .trim()
        .parse::<usize>()
        .map_err(|e| format!("{k:?}: {e}"))?;
    Ok([i0, j0, i1, j1, k])
}

/// `I0,J0,K0,I1,J1,K1`.
fn parse_box3d(text: &str) -> Result<[usize; 6], String> {
    parse_indices(
        text,
        &format!("{text:?}: expected I0,J0,K0,I1,J1,K1 (inclusive voxel indices)"),
    )
}

/// `LEVEL,WIDTH`.
fn parse_window(text: &str) -> Result<(f64, f64), String> {
    let (level, width) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?}: expected LEVEL,WIDTH (e.g. 40,400)"))?;
    let level: f64 = level
        .trim()
        .parse()
        .map_err(|e| format!("{level:?}: {e}"))?;
    let width: f64 = width
        .trim()
        .parse()
        .map_err(|e| format!("{width:?}: {e}"))?;
    if !(level.is_finite() && width.is_finite() && width > 0.0) {
        return Err(format!("{text:?}: the width must be positive"));
    }
    Ok((level, width))
}

/// The prompts in command-line order: (is 3-D, index among its kind). clap keeps `--box` and
/// `--box3d` apart; their positions on the command line interleave them again.
fn prompt_order(n2d: usize, n3d: usize) -> Vec<(bool, usize)> {
    use clap::CommandFactory;
    let positions = Cli::command()
        .try_get_matches_from(std::env::args_os())
        .ok()
        .and_then(|m| {
            let p = m.subcommand_matches("prompt")?;
            let of =
                |id: &str| -> Vec<usize> { p.indices_of(id).map_or(Vec::new(), Iterator::collect) };
            Some((of("boxes"), of("boxes3d")))
        });
    let mut order: Vec<(usize, bool, usize)> = match positions {
        Some((a, b)) if a.len() == n2d && b.len() == n3d => a
            .into_iter()
            .enumerate()
            .map(|(n, at)| (at, false, n))
            .chain(b.into_iter().enumerate().map(|(n, at)| (at, true, n)))
            .collect(),
        // not from this process's command line: 2-D boxes first
        _ => (0..n2d)
            .map(|n| (n, false, n))
            .chain((0..n3d).map(|n| (n2d + n, true, n)))
            .collect(),
    };
    order.sort_unstable();
    order.into_iter().map(|(_, d3, n)| (d3, n)).collect()
}

/// The prompts of `insitu prompt`: from --boxes-from, or --box/--box3d in command-line order.
fn prompts_of(
    args: &PromptArgs,
    input: &volume::Geometry,
) -> Result<Vec<insitu::litemedsam::pipeline::Prompt>> {
    use insitu::litemedsam::pipeline::{self as sam, BoxProtocol, Prompt};
    if let Some(path) = &args.boxes_from {
        let reference = read_labels(path)?;
        let (got, want) = (reference.geometry.dims, input.dims);
        if got != want {
            bail!(
                "{}: reference labels on a {} x {} x {} grid, the input {} is {} x {} x {}: \
                 give labels on the input's own grid",
                path.display(),
                got[0],
                got[1],
                got[2],
                args.input.display(),
                want[0],
                want[1],
                want[2]
            );
        }
        let protocol = match args.protocol {
            ProtocolArg::PerSlice => BoxProtocol::PerSlice,
            ProtocolArg::Box3d => BoxProtocol::Box3d,
        };
        let prompts = sam::boxes_from_reference(&reference, protocol);
        if prompts.is_empty() {
            bail!(
                "{}: no labels above 0, so no boxes to prompt with",
                path.display()
            );
        }
        eprintln!(
            "{} prompt(s) from {} ({})",
            prompts.len(),
            path.display(),
            protocol.name()
        );
        return Ok(prompts);
    }
    let order = prompt_order(args.boxes.len(), args.boxes3d.len());
    if order.is_empty() {
        bail!("no prompts: give at least one --box I0,J0,I1,J1@K or --box3d I0,J0,K0,I1,J1,K1, or --boxes-from LABELS");
    }
    let labels = &args.labels;
    if !labels.is_empty() && labels.len() != order.len() {
        bail!(
            "{} --label value(s) for {} prompt(s): give one per prompt, in command-line order, or none (1, 2, 3, ...)",
            labels.len(),
            order.len()
        );
    }
    if let Some(n) = labels.iter().position(|&l| l == 0) {
        bail!(
            "--label {}: label 0 is the background; use 1 or more",
            n + 1
        );
    }
    Ok(order
        .iter()
        .enumerate()
        .map(|(n, &(is_3d, i))| {
            let label = labels.get(n).copied().unwrap_or(n as u16 + 1);
            if is_3d {
                Prompt::Box3d {
                    ijk: args.boxes3d[i],
                    label,
                }
            } else {
                let b = args.boxes[i];
                Prompt::Box2d {
                    ij: [b[0], b[1], b[2], b[3]],
                    k: b[4],
                    label,
                }
            }
        })
        .collect())
}

fn prompt(args: &PromptArgs, budget: usize) -> Result<()> {
    use insitu::litemedsam::pipeline::{
        self as sam, CtWindow, Modality, PromptCache, PromptOptions,
    };
    let entry = Registry::builtin().get(&args.model)?;
    if !entry.is_promptable() {
        bail!(
            "{} is a dense model (it labels every voxel): use insitu segment --model {}",
            entry.id,
            entry.id
        );
    }
    let input = &args.input;
    let (volume, _) = read_input_as(input, args.series.as_deref(), args.volume)?;
    let prompts = prompts_of(args, &volume.geometry)?;
    warn_fit(entry, &volume, input);
    let name = input.display().to_string();
    sam::check_prompts(volume.geometry.dims, &prompts).map_err(|e| anyhow!("{name}: {e}"))?;

    let run::Model::Promptable(model) = run::Model::load(&entry.id, model_files(entry)?)? else {
        bail!("model {} is not promptable", entry.id);
    };
    let device = choose_device(args.device, budget)?;
    let device_name = device.describe();
    let clock = Instant::now();
    let sam_model = model.on_device(&device)?;
    let (level, width) = args.ct_window;
    // said before the slices run: the pipeline's own guess, made here first
    let modality = match args.modality {
        Some(ModalityArg::Ct) => {
            eprintln!("modality CT (given), window level {level} / width {width}");
            Modality::Ct
        }
        Some(ModalityArg::Mr) => {
            eprintln!("modality MR (given)");
            Modality::Mr
        }
        None => {
            let (m, why) = sam::guess_modality(&volume);
            let window = if m == Modality::Ct {
                format!(", window level {level} / width {width}")
            } else {
                String::new()
            };
            eprintln!(
                "modality {} (guessed from {why}; set it with --modality){window}",
                m.name()
            );
            m
        }
    };
    let options = PromptOptions {
        modality: Some(modality),
        ct_window: CtWindow { level, width },
    };
    let now = || clock.elapsed().as_secs_f64() * 1000.0;
    let ms = |t: Option<f64>| t.map_or_else(|| "cached".to_string(), |ms| format!("{ms:.0} ms"));
    let mut progress = |p: sam::Progress| {
        let s = p.slice;
        eprintln!(
            "prompt {}/{} (label {}) slice {} ({}/{}): encoder {}, decoder {}, {} px",
            s.prompt + 1,
            p.prompts,
            prompts[s.prompt].label(),
            s.k,
            p.done,
            p.total,
            ms(s.encoder_ms),
            ms(s.decoder_ms),
            s.mask_pixels
        );
    };
    let result = pollster::block_on(sam::segment(
        &sam_model,
        &volume,
        &prompts,
        &options,
        &mut PromptCache::default(),
        &now,
        &mut progress,
    ))
    .map_err(|e| anyhow!("{name}: {e}"))?;
    let stats = &result.stats;
    eprintln!(
        "{} on {device_name}: {} prompt(s); encoder {:.0} ms ({} slice(s)), decoder {:.0} ms ({} box(es)), total {:.0} ms",
        entry.id,
        prompts.len(),
        stats.encoder_ms,
        stats.encoded_slices,
        stats.decoder_ms,
        stats.decoded_boxes,
        now()
    );
    write_labels(&result.labels, &args.output)
}
