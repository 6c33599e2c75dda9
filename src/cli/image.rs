//! The image commands over the store: import, images, tag, rmi, inspect, history, save, load,
//! fsck, prune. Flags and output follow docker's; data goes to stdout, messages to stderr.

use super::GlobalOpts;
use crate::store::archive::{familiar_name, SaveItem};
use crate::store::{parse_reference, Image, ImageConfig, Reference, Store};
use anyhow::{bail, Context};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

fn open_store(global: &GlobalOpts) -> anyhow::Result<Store> {
    let root = global.store_root();
    Store::open(&root).with_context(|| format!("cannot open store {}", root.display()))
}

/// Docker's output format choice: a table, JSON, or a Go-template-like string.
fn wants_json(format: &Option<String>) -> bool {
    matches!(format.as_deref(), Some("json") | Some("{{json .}}"))
}

/// Fills `{{.Field.Sub}}` and `{{json .Field}}` placeholders from a JSON value, a small subset
/// of docker's Go templates that covers the common `--format` uses.
fn render_template(template: &str, value: &serde_json::Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .with_context(|| format!("unterminated {{{{ in format {template:?}"))?;
        let expr = rest[start + 2..start + end].trim();
        let (as_json, path) = match expr.strip_prefix("json ") {
            Some(path) => (true, path.trim()),
            None => (false, expr),
        };
        let path = path
            .strip_prefix('.')
            .with_context(|| format!("unsupported format expression {expr:?}"))?;
        let mut current = value;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            current = &current[part];
        }
        match current {
            serde_json::Value::String(s) if !as_json => out.push_str(s),
            serde_json::Value::Null if !as_json => out.push_str("<no value>"),
            other => out.push_str(&serde_json::to_string(other)?),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Prints `rows` as `docker images` and `docker history` do: only the IDs (`-q`), one JSON
/// object per line (`--format json`), a Go template per row (`--format '{{.ID}}'`), or a
/// table of `header` and each row's `cells`.
fn print_rows(
    rows: &[serde_json::Value],
    quiet: bool,
    format: &Option<String>,
    header: &[&str],
    cells: impl Fn(&serde_json::Value) -> Vec<String>,
) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if quiet {
        for row in rows {
            writeln!(out, "{}", row["ID"].as_str().unwrap_or_default())?;
        }
    } else if wants_json(format) {
        for row in rows {
            writeln!(out, "{row}")?;
        }
    } else if let Some(template) = format.as_deref().filter(|f| *f != "table") {
        for row in rows {
            writeln!(out, "{}", render_template(template, row)?)?;
        }
    } else {
        let mut table = vec![header.iter().map(|h| h.to_string()).collect()];
        table.extend(rows.iter().map(&cells));
        print_table(&mut out, &table)?;
    }
    out.flush()?;
    Ok(0)
}

/// Prints rows as docker's tabwriter does: columns padded to the widest cell plus 3 spaces.
fn print_table(out: &mut dyn Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let n_columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n_columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] + 3 - cell.chars().count();
                line.push_str(&" ".repeat(pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Docker's human size (decimal units, 3 significant digits): `4.26MB`.
pub fn human_size(size: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    // %.3g: three significant digits, trailing zeros dropped.
    let digits_before = if value >= 100.0 {
        3
    } else if value >= 10.0 {
        2
    } else {
        1
    };
    let text = format!("{:.*}", 3 - digits_before, value);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{}", UNITS[unit])
}

/// Docker's "N units ago".
pub fn human_since(created: Option<chrono::DateTime<chrono::FixedOffset>>) -> String {
    let Some(created) = created else {
        return "N/A".to_string();
    };
    let seconds = (chrono::Utc::now() - created.with_timezone(&chrono::Utc)).num_seconds();
    let text = if seconds < 1 {
        "Less than a second".to_string()
    } else if seconds == 1 {
        "1 second".to_string()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if seconds / 60 == 1 {
        "About a minute".to_string()
    } else if seconds < 3600 {
        format!("{} minutes", seconds / 60)
    } else if (seconds as f64 / 3600.0).round() as i64 == 1 {
        "About an hour".to_string()
    } else if seconds < 48 * 3600 {
        format!("{} hours", (seconds as f64 / 3600.0).round() as i64)
    } else if seconds < 7 * 24 * 3600 * 2 {
        format!("{} days", seconds / (24 * 3600))
    } else if seconds < 30 * 24 * 3600 * 2 {
        format!("{} weeks", seconds / (7 * 24 * 3600))
    } else if seconds < 365 * 24 * 3600 * 2 {
        format!("{} months", seconds / (30 * 24 * 3600))
    } else {
        format!("{} years", seconds / (365 * 24 * 3600))
    };
    format!("{text} ago")
}

fn familiar_repository(reference: &Reference) -> String {
    let name = familiar_name(reference);
    match reference.tag() {
        Some(tag) => name
            .strip_suffix(&format!(":{tag}"))
            .unwrap_or(&name)
            .to_string(),
        None => name,
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "arm" => "arm",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The creation time for new images: `SOURCE_DATE_EPOCH` when set (reproducible builds), now
/// otherwise.
fn creation_time() -> anyhow::Result<String> {
    let time = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) if !epoch.is_empty() => {
            let seconds: i64 = epoch
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not a number"))?;
            chrono::DateTime::from_timestamp(seconds, 0)
                .with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is out of range"))?
        }
        _ => chrono::Utc::now(),
    };
    Ok(time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

/// Arguments of `kiln import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Root filesystem tarball (plain, gzip or zstd), or `-` for standard input.
    pub file: String,
    /// Name for the new image.
    pub reference: Option<String>,
    /// Comment recorded in the image history.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
}

pub fn import(args: ImportArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let reference = args.reference.as_deref().map(parse_reference).transpose()?;
    let store = open_store(global)?;
    let _pin = store.pin()?;
    let mut input: Box<dyn Read> = if args.file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file))?,
        )
    };
    let layer = store
        .write_layer(&mut input, &args.file)
        .with_context(|| format!("cannot import {}", args.file))?;
    let created = creation_time()?;
    let comment = args
        .message
        .clone()
        .unwrap_or_else(|| format!("Imported from {}", args.file));
    let oci: oci_spec::image::ImageConfiguration = serde_json::from_value(serde_json::json!({
        "created": created,
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
        "history": [{"created": created, "comment": comment}],
    }))?;
    let image = store.put_image(&ImageConfig::new(oci), vec![layer.descriptor()])?;
    if let Some(reference) = &reference {
        store.set_name(reference, &image.manifest_digest)?;
    }
    println!("{}", image.id());
    Ok(0)
}

/// Arguments of `kiln images`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Only show images of this repository (and tag).
    pub repository: Option<String>,
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full image IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format: `table` (default), `json` (one object per line) or a template such as
    /// `{{.Repository}}:{{.Tag}}`.
    #[arg(long)]
    pub format: Option<String>,
}

pub fn images(args: ImagesArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    let mut images = store.images()?;
    images.sort_by_key(|image| std::cmp::Reverse(image.created()));
    let filter = args
        .repository
        .as_deref()
        .map(parse_reference)
        .transpose()?;
    let explicit_tag = args
        .repository
        .as_deref()
        .map(|r| r.rsplit('/').next().unwrap_or(r).contains(':'))
        .unwrap_or(false);
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for image in &images {
        let id = image.id();
        let id_text = if args.no_trunc {
            id.to_string()
        } else {
            id.short().to_string()
        };
        let mut names: Vec<Option<Reference>> = image
            .names
            .iter()
            .filter_map(|n| n.parse().ok())
            .map(Some)
            .collect();
        if names.is_empty() {
            names.push(None);
        }
        for name in names {
            if let Some(filter) = &filter {
                let Some(name) = &name else { continue };
                if name.registry() != filter.registry() || name.repository() != filter.repository()
                {
                    continue;
                }
                if explicit_tag && name.tag() != filter.tag() {
                    continue;
                }
            }
            let (repository, tag) = match &name {
                Some(name) => (
                    familiar_repository(name),
                    name.tag().unwrap_or("<none>").to_string(),
                ),
                None => ("<none>".to_string(), "<none>".to_string()),
            };
            rows.push(serde_json::json!({
                "ID": id_text,
                "Repository": repository,
                "Tag": tag,
                "Digest": image.manifest_digest.to_string(),
                "CreatedAt": image.created().map(|c| c.to_rfc3339()).unwrap_or_default(),
                "CreatedSince": human_since(image.created()),
                "Size": human_size(image.size()),
            }));
        }
    }
    print_rows(
        &rows,
        args.quiet,
        &args.format,
        &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        |row| {
            ["Repository", "Tag", "ID", "CreatedSince", "Size"]
                .iter()
                .map(|k| row[*k].as_str().unwrap_or_default().to_string())
                .collect()
        },
    )
}

/// Arguments of `kiln tag`.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// Existing image: name or ID.
    pub source: String,
    /// New name.
    pub target: String,
}

pub fn tag(args: TagArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let target = parse_reference(&args.target)?;
    if target.digest().is_some() {
        bail!("cannot tag with a digest reference: {}", args.target);
    }
    let store = open_store(global)?;
    let image = store.resolve(&args.source)?;
    store.set_name(&target, &image.manifest_digest)?;
    Ok(0)
}

/// Arguments of `kiln rmi`.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Images to remove: names or IDs.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove an image given by ID even when several names point at it.
    #[arg(short, long)]
    pub force: bool,
}

pub fn rmi(args: RmiArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    let mut failed = false;
    for query in &args.images {
        if let Err(err) = rmi_one(&store, query, args.force) {
            eprintln!("error: {err:#}");
            failed = true;
        }
    }
    Ok(if failed { super::EXIT_FAILURE } else { 0 })
}

fn rmi_one(store: &Store, query: &str, force: bool) -> anyhow::Result<()> {
    let image = store.resolve(query)?;
    let by_name = query
        .parse::<Reference>()
        .ok()
        .filter(|r| image.names.contains(&r.whole()));
    let names_to_remove: Vec<String> = match &by_name {
        Some(reference) => vec![reference.whole()],
        None => {
            if image.names.len() > 1 && !force {
                bail!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    image.id().short()
                );
            }
            image.names.clone()
        }
    };
    for name in &names_to_remove {
        store.remove_name(name)?;
        let reference: Reference = name.parse()?;
        println!("Untagged: {}", familiar_name(&reference));
    }
    let remaining = store
        .images()?
        .into_iter()
        .any(|i| i.manifest_digest == image.manifest_digest);
    if remaining && by_name.is_none() {
        store.remove_image(&image.manifest_digest)?;
    }
    let still_there = store
        .images()?
        .into_iter()
        .any(|i| i.manifest_digest == image.manifest_digest);
    if !still_there {
        println!("Deleted: {}", image.id());
    }
    Ok(())
}

fn history_rows(image: &Image) -> Vec<serde_json::Value> {
    let history = image.config.oci.history().clone().unwrap_or_default();
    let mut layers = image.layers().iter();
    let mut rows = Vec::new();
    for entry in &history {
        let size = if entry.empty_layer().unwrap_or(false) {
            0
        } else {
            layers.next().map(|l| l.size()).unwrap_or(0)
        };
        let created = entry
            .created()
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok());
        rows.push(serde_json::json!({
            "CreatedAt": created.map(|c| c.to_rfc3339()).unwrap_or_default(),
            "CreatedSince": human_since(created),
            "CreatedBy": entry.created_by().clone().unwrap_or_default(),
            "Size": size,
            "Comment": entry.comment().clone().unwrap_or_default(),
        }));
    }
    rows.reverse();
    rows
}

fn inspect_value(image: &Image) -> anyhow::Result<serde_json::Value> {
    let raw: serde_json::Value = serde_json::from_slice(&image.config_bytes)?;
    let names: Vec<Reference> = image.names.iter().filter_map(|n| n.parse().ok()).collect();
    let repo_tags: Vec<String> = names.iter().map(familiar_name).collect();
    let mut repo_digests: Vec<String> = names
        .iter()
        .map(|n| format!("{}@{}", familiar_repository(n), image.manifest_digest))
        .collect();
    repo_digests.dedup();
    let history = raw["history"].clone();
    Ok(serde_json::json!({
        "Id": image.id().to_string(),
        "RepoTags": repo_tags,
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": "",
        "Created": raw["created"],
        "Author": raw["author"].as_str().unwrap_or_default(),
        "Config": raw["config"],
        "Architecture": raw["architecture"],
        "Variant": raw["variant"],
        "Os": raw["os"],
        "Size": image.size(),
        "RootFS": {
            "Type": raw["rootfs"]["type"],
            "Layers": raw["rootfs"]["diff_ids"],
        },
        "History": if history.is_null() { serde_json::json!([]) } else { history },
        "Descriptor": {
            "mediaType": image.manifest_media_type,
            "digest": image.manifest_digest.to_string(),
            "size": image.manifest_bytes.len(),
        },
        "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
    }))
}

/// Arguments of `kiln inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Images: names or IDs.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// `json` (the default: a JSON array) or a template such as `{{.Id}}`.
    #[arg(short, long)]
    pub format: Option<String>,
}

pub fn inspect(args: InspectArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    let mut values = Vec::new();
    for query in &args.images {
        values.push(inspect_value(&store.resolve(query)?)?);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format.as_deref() {
        None | Some("json") => {
            serde_json::to_writer_pretty(&mut out, &values)?;
            writeln!(out)?;
        }
        Some(template) => {
            for value in &values {
                writeln!(out, "{}", render_template(template, value)?)?;
            }
        }
    }
    out.flush()?;
    Ok(0)
}

/// Arguments of `kiln history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Image: name or ID.
    pub image: String,
    /// Do not truncate CREATED BY or IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Show sizes and dates in bytes and RFC 3339.
    #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set)]
    pub human: bool,
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// `table` (default), `json` (one object per line) or a template.
    #[arg(long)]
    pub format: Option<String>,
}

pub fn history(args: HistoryArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    let image = store.resolve(&args.image)?;
    let id = if args.no_trunc {
        image.id().to_string()
    } else {
        image.id().short().to_string()
    };
    let mut rows = history_rows(&image);
    // Steps the last `kiln build` of this image took from the build cache.
    if let Some(cached) = crate::executor::build::record::load_build_note(&store, &image.id()) {
        let n_rows = rows.len();
        for (index, hit) in cached.iter().enumerate() {
            if *hit && index < n_rows {
                rows[n_rows - 1 - index]["Comment"] = serde_json::json!("kiln: cached");
            }
        }
    }
    for (i, row) in rows.iter_mut().enumerate() {
        row["ID"] = serde_json::json!(if i == 0 { id.as_str() } else { "<missing>" });
        let size = row["Size"].as_u64().unwrap_or(0);
        if args.human {
            row["Size"] = serde_json::json!(human_size(size));
        } else {
            row["Size"] = serde_json::json!(size.to_string());
            row["CreatedSince"] = row["CreatedAt"].clone();
        }
    }
    print_rows(
        &rows,
        args.quiet,
        &args.format,
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        |row| {
            let mut created_by = row["CreatedBy"].as_str().unwrap_or_default().to_string();
            if !args.no_trunc && created_by.chars().count() > 45 {
                created_by = created_by.chars().take(44).collect::<String>() + "…";
            }
            vec![
                row["ID"].as_str().unwrap_or_default().to_string(),
                row["CreatedSince"].as_str().unwrap_or_default().to_string(),
                created_by,
                row["Size"].as_str().unwrap_or_default().to_string(),
                row["Comment"].as_str().unwrap_or_default().to_string(),
            ]
        },
    )
}

/// Arguments of `kiln save`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Images to save: names or IDs.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn save(args: SaveArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    let mut items: Vec<SaveItem> = Vec::new();
    for query in &args.images {
        let image = store.resolve(query)?;
        // As docker: a name saves that name; an ID saves the image without names.
        let name = query
            .parse::<Reference>()
            .ok()
            .filter(|r| image.names.contains(&r.whole()));
        match items
            .iter_mut()
            .find(|i| i.image.manifest_digest == image.manifest_digest)
        {
            Some(item) => item.names.extend(name),
            None => items.push(SaveItem {
                image,
                names: name.into_iter().collect(),
            }),
        }
    }
    match &args.output {
        Some(path) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let temp = tempfile::Builder::new()
                .prefix(".kiln-save-")
                .tempfile_in(&dir)
                .with_context(|| format!("cannot create a file in {}", dir.display()))?;
            let writer = std::io::BufWriter::with_capacity(1 << 20, temp);
            let writer = store
                .save(&items, writer)
                .with_context(|| format!("cannot save to {}", path.display()))?;
            let temp = writer.into_inner().map_err(|e| e.into_error())?;
            temp.as_file().sync_all()?;
            temp.persist(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write an image archive to a terminal: use -o FILE or redirect standard output");
            }
            let writer = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let mut writer = store.save(&items, writer)?;
            writer.flush()?;
        }
    }
    Ok(0)
}

/// Arguments of `kiln load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Read from this file (docker-archive or OCI archive; plain, gzip or zstd) instead of
    /// standard input.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Print nothing.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn load(args: LoadArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    let (mut input, what): (Box<dyn Read>, String) = match &args.input {
        Some(path) => (
            Box::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
            path.display().to_string(),
        ),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no archive on standard input: use -i FILE or redirect standard input");
            }
            (Box::new(std::io::stdin().lock()), "standard input".into())
        }
    };
    let loaded = store
        .load(&mut input)
        .with_context(|| format!("cannot load {what}"))?;
    if !args.quiet {
        for image in &loaded {
            if image.names.is_empty() {
                println!("Loaded image ID: {}", image.id);
            }
            for name in &image.names {
                println!("Loaded image: {}", familiar_name(name));
            }
        }
    }
    Ok(0)
}

/// Arguments of `kiln fsck`.
#[derive(Debug, clap::Args)]
pub struct FsckArgs {}

pub fn fsck(_args: FsckArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    let report = store.fsck()?;
    for problem in &report.problems {
        eprintln!("fsck: {problem}");
    }
    if report.is_clean() {
        println!(
            "ok: {} blobs and {} images verified",
            report.n_blobs, report.n_images
        );
        Ok(0)
    } else {
        eprintln!("fsck: {} problems found", report.problems.len());
        Ok(super::EXIT_FAILURE)
    }
}

/// Arguments of `kiln prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {}

pub fn prune(_args: PruneArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let store = open_store(global)?;
    let report = store.prune()?;
    report.swept.log(|line| eprintln!("{line}"));
    println!(
        "Deleted {} blobs, {} snapshots, {} temporary files\nTotal reclaimed space: {}",
        report.n_blobs,
        report.n_snapshots,
        report.n_temp,
        human_size(report.bytes_freed)
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_docker_prints_them() {
        let check = |size: u64, expect: &str| assert_eq!(human_size(size), expect);
        check(0, "0B");
        check(999, "999B");
        check(1000, "1kB");
        check(4_261_234, "4.26MB");
        check(12_345_678, "12.3MB");
        check(123_456_789, "123MB");
    }

    #[test]
    fn templates_fill_fields() {
        let value = serde_json::json!({"Id": "sha256:ab", "Config": {"Cmd": ["sh"]}});
        assert_eq!(render_template("{{.Id}}", &value).unwrap(), "sha256:ab");
        assert_eq!(
            render_template("x={{json .Config.Cmd}}", &value).unwrap(),
            "x=[\"sh\"]"
        );
    }
}
