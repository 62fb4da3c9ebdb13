//! The model store's subcommands: `pull`, `create`, `list`, `show`, `cp`, `rm`, `ps`, and the
//! pull-if-missing step of `run`. Each subcommand has a clap `Args` struct and a `run_*` function;
//! main.rs wires them in. Results go to stdout, progress and notes to stderr.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use smelt_store::{
    render_modelfile, CreateSpec, ModelName, ModelSource, Modelfile, PullOptions, PullProgress,
    ResolvedModel, Store,
};

// ------------------------------------------------------------------------------------------------
// pull

#[derive(Args, Debug, Clone)]
pub struct PullArgs {
    /// smollm2:135m, namespace/model:tag, host[:port]/namespace/model:tag, or hf.co/ORG/REPO[:QUANT]
    pub model: String,
    /// Allow a plain-HTTP registry, e.g. 127.0.0.1:5000/library/smollm2:135m
    #[arg(long)]
    pub insecure: bool,
}

pub fn run_pull(args: &PullArgs) -> Result<()> {
    let store = Store::open_default()?;
    let name = ModelName::parse(&args.model)?;
    let mut opts = PullOptions::from_env();
    opts.insecure = args.insecure;
    let mut progress = Progress::new();
    let result = store.pull(
        &name,
        &opts,
        &mut |p| progress.update(p),
        &AtomicBool::new(false),
    );
    progress.finish();
    result?;
    Ok(())
}

/// For `smelt run` and `smelt serve` (main.rs): resolves a name or a GGUF path, pulling a missing named
/// model first (progress on stderr), as `ollama run` does.
#[allow(dead_code)] // until main.rs's `run` calls it
pub fn ensure_model(spec: &str, insecure: bool) -> Result<ResolvedModel> {
    let store = Store::open_default()?;
    let mut opts = PullOptions::from_env();
    opts.insecure = insecure;
    let mut progress = Progress::new();
    let result = store.ensure(
        spec,
        &opts,
        &mut |p| progress.update(p),
        &AtomicBool::new(false),
    );
    progress.finish();
    Ok(result?)
}

// ------------------------------------------------------------------------------------------------
// create

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Name of the new model
    pub model: String,
    /// Modelfile to build from (default: ./Modelfile)
    #[arg(short = 'f', long = "file", conflicts_with = "from")]
    pub file: Option<PathBuf>,
    /// A GGUF file to link into the store as the model, without copying it
    #[arg(long)]
    pub from: Option<PathBuf>,
}

pub fn run_create(args: &CreateArgs) -> Result<()> {
    let store = Store::open_default()?;
    let name = ModelName::parse(&args.model)?;
    let (spec, base_dir) = match (&args.from, &args.file) {
        (Some(gguf), _) => (CreateSpec::from_path(gguf), std::env::current_dir()?),
        (None, file) => {
            let path = file.clone().unwrap_or_else(|| PathBuf::from("Modelfile"));
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading Modelfile {} (give one with -f, or use --from FILE.gguf)",
                    path.display()
                )
            })?;
            let spec = Modelfile::parse(&text, &path.display().to_string())?.to_spec()?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (spec, dir.to_path_buf())
        }
    };
    let mut progress = Progress::new();
    let result = store.create(&name, &spec, &base_dir, &mut |p| progress.update(p));
    progress.finish();
    result?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// list

#[derive(Args, Debug, Clone, Default)]
pub struct ListArgs {}

pub fn run_list(_args: &ListArgs) -> Result<()> {
    let store = Store::open_default()?;
    let now = SystemTime::now();
    let mut rows = vec![["NAME", "ID", "SIZE", "MODIFIED", "SOURCE"]
        .map(String::from)
        .to_vec()];
    for e in store.list()? {
        rows.push(vec![
            e.name.to_string(),
            e.digest.map_or_else(|| "-".into(), |d| d.short()),
            human_bytes(e.size),
            human_since(now, e.modified),
            source_label(&e.source),
        ]);
    }
    print_table(&rows);
    Ok(())
}

fn source_label(s: &ModelSource) -> String {
    match s {
        ModelSource::Smelt => "smelt".into(),
        ModelSource::Ollama(root) => format!("ollama ({})", root.display()),
        ModelSource::Dir(dir) => format!("dir ({})", dir.display()),
        ModelSource::File => "file".into(),
    }
}

// ------------------------------------------------------------------------------------------------
// show

#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// A model name or a path to a GGUF file
    pub model: String,
    /// Print a Modelfile that recreates the model
    #[arg(long)]
    pub modelfile: bool,
    /// Print the default parameters
    #[arg(long)]
    pub parameters: bool,
    /// Print the prompt template (the TEMPLATE layer, else the GGUF's chat template)
    #[arg(long)]
    pub template: bool,
    /// Print the system prompt
    #[arg(long)]
    pub system: bool,
    /// Print the license (LICENSE layers, else the GGUF's general.license)
    #[arg(long)]
    pub license: bool,
}

pub fn run_show(args: &ShowArgs) -> Result<()> {
    let store = Store::open_default()?;
    let m = store.resolve_spec(&args.model)?;
    let mut out = std::io::stdout().lock();
    if args.modelfile {
        write!(out, "{}", render_modelfile(&m))?;
        return Ok(());
    }
    if args.parameters {
        for (k, v) in parameter_lines(&m) {
            writeln!(out, "{k:<20}{v}")?;
        }
        return Ok(());
    }
    if args.template || args.system || args.license {
        // A model without a TEMPLATE or LICENSE layer uses what its GGUF file carries.
        let from_gguf = |key: &str| {
            let g = smelt_gguf::Gguf::open(&m.gguf_path).ok()?;
            g.get_str(key).ok().flatten().map(str::to_string)
        };
        let text = match (args.template, args.system) {
            (true, _) => m
                .template
                .clone()
                .or_else(|| from_gguf("tokenizer.chat_template")),
            (_, true) => m.system.clone(),
            _ if !m.license.is_empty() => Some(m.license.join("\n\n")),
            _ => from_gguf("general.license"),
        };
        writeln!(out, "{}", text.unwrap_or_default())?;
        return Ok(());
    }
    writeln!(out, "  Model")?;
    for (k, v) in model_facts(&m) {
        writeln!(out, "    {k:<20}{v}")?;
    }
    writeln!(out, "    {:<20}{}", "device", device_choice())?;
    let params = parameter_lines(&m);
    if !params.is_empty() {
        writeln!(out, "\n  Parameters")?;
        for (k, v) in params {
            writeln!(out, "    {k:<20}{v}")?;
        }
    }
    let gguf = smelt_gguf::Gguf::open(&m.gguf_path).ok();
    let from_gguf = |key: &str| {
        gguf.as_ref()
            .and_then(|g| g.get_str(key).ok().flatten().map(str::to_string))
    };
    let template = m
        .template
        .clone()
        .or_else(|| from_gguf("tokenizer.chat_template"));
    writeln!(out, "\n  Template")?;
    match template {
        Some(t) => {
            for line in t.lines().filter(|l| !l.trim().is_empty()).take(6) {
                writeln!(out, "    {line}")?;
            }
        }
        None => writeln!(
            out,
            "    (none in the file: the built-in template for the architecture is used)"
        )?,
    }
    if let Some(s) = &m.system {
        writeln!(out, "\n  System")?;
        for line in s.lines().take(8) {
            writeln!(out, "    {line}")?;
        }
    }
    let license = m
        .license
        .first()
        .cloned()
        .or_else(|| from_gguf("general.license"));
    if let Some(l) = license {
        writeln!(out, "\n  License")?;
        for line in l.lines().filter(|l| !l.trim().is_empty()).take(4) {
            writeln!(out, "    {}", line.trim())?;
        }
    }
    Ok(())
}

/// Architecture, sizes and quantization, from the GGUF header where it can be read.
/// Where `smelt run`/`serve` would run a model here: the `--device` choice (or its
/// environment variable) resolved against the GPU this build can use. `auto` falls back to
/// the CPU when the model's weight types are not supported on the GPU; that shows at load.
fn device_choice() -> String {
    use smelt_engine::BackendKind;
    let gpu = smelt_engine::cuda_available();
    match BackendKind::from_env() {
        Ok(BackendKind::Cuda) if gpu => "cuda".into(),
        Ok(BackendKind::Cuda) => "cuda requested, but no usable GPU here".into(),
        Ok(BackendKind::Auto) if gpu => "cuda (auto)".into(),
        Ok(BackendKind::Auto) => "cpu (auto: no usable GPU)".into(),
        Ok(_) => "cpu".into(),
        Err(e) => e.to_string(),
    }
}

fn model_facts(m: &ResolvedModel) -> Vec<(&'static str, String)> {
    let mut facts = vec![
        ("architecture", m.details.family.clone()),
        ("parameters", m.details.parameter_size.clone()),
    ];
    if let Ok(g) = smelt_gguf::Gguf::open(&m.gguf_path) {
        let arch = g.architecture().unwrap_or_default().to_string();
        for (label, key) in [
            ("context length", "context_length"),
            ("embedding length", "embedding_length"),
        ] {
            if let Ok(Some(v)) = g.get_u64(&format!("{arch}.{key}")) {
                facts.push((label, v.to_string()));
            }
        }
    }
    facts.push(("quantization", m.details.quantization_level.clone()));
    if let Ok(g) = smelt_gguf::Gguf::open(&m.gguf_path) {
        let mut mix: Vec<(&str, usize)> = Vec::new();
        for t in g.tensors() {
            match mix.iter_mut().find(|(n, _)| *n == t.dtype.name()) {
                Some((_, c)) => *c += 1,
                None => mix.push((t.dtype.name(), 1)),
            }
        }
        mix.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mix: Vec<String> = mix.iter().map(|(n, c)| format!("{n} x{c}")).collect();
        facts.push(("tensor types", mix.join(", ")));
    }
    facts.push(("size", human_bytes(m.size)));
    facts.push(("source", source_label(&m.source)));
    facts.push(("file", m.gguf_path.display().to_string()));
    facts.retain(|(_, v)| !v.is_empty());
    facts
}

fn parameter_lines(m: &ResolvedModel) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    for (k, v) in &m.params {
        match v {
            serde_json::Value::Array(items) => {
                lines.extend(items.iter().map(|i| (k.clone(), i.to_string())))
            }
            other => lines.push((k.clone(), other.to_string())),
        }
    }
    lines
}

// ------------------------------------------------------------------------------------------------
// cp and rm

#[derive(Args, Debug, Clone)]
pub struct CpArgs {
    pub source: String,
    pub destination: String,
}

pub fn run_cp(args: &CpArgs) -> Result<()> {
    let store = Store::open_default()?;
    let (src, dst) = (
        ModelName::parse(&args.source)?,
        ModelName::parse(&args.destination)?,
    );
    store.copy(&src, &dst)?;
    println!("copied '{src}' to '{dst}'");
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct RmArgs {
    /// One or more model names
    #[arg(required = true)]
    pub models: Vec<String>,
}

pub fn run_rm(args: &RmArgs) -> Result<()> {
    let store = Store::open_default()?;
    for model in &args.models {
        let name = ModelName::parse(model)?;
        let report = store.remove(&name)?;
        println!("deleted '{name}'");
        if report.gc_deferred {
            eprintln!("note: a pull or create is running, so unused blobs are left for the next `smelt rm`");
        } else if report.bytes_freed > 0 {
            eprintln!("freed {}", human_bytes(report.bytes_freed));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// ps

#[derive(Args, Debug, Clone, Default)]
pub struct PsArgs {
    /// Server address (default: $SMELT_HOST, else $OLLAMA_HOST, else 127.0.0.1:11434)
    #[arg(long)]
    pub host: Option<String>,
}

pub fn run_ps(args: &PsArgs) -> Result<()> {
    let base = server_url(args.host.as_deref());
    let url = format!("{base}/api/ps");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut reply = match agent.get(&url).call() {
        Ok(r) => r,
        Err(ureq::Error::StatusCode(s)) => bail!("{url}: HTTP {s}"),
        Err(e) => bail!("no smelt server at {base} ({e}); start one with `smelt serve`"),
    };
    let text = reply
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    let body: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {url}"))?;
    let now = SystemTime::now();
    let mut rows = vec![["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
        .map(String::from)
        .to_vec()];
    for m in body["models"].as_array().into_iter().flatten() {
        let size = m["size"].as_u64().unwrap_or(0);
        let vram = m["size_vram"].as_u64().unwrap_or(0);
        let processor = match (size, vram) {
            (0, _) | (_, 0) => "100% CPU".to_string(),
            (s, v) if v >= s => "100% GPU".to_string(),
            (s, v) => format!("{}%/{}% CPU/GPU", 100 - v * 100 / s, v * 100 / s),
        };
        let digest = m["digest"].as_str().unwrap_or("");
        let until = m["expires_at"]
            .as_str()
            .and_then(parse_rfc3339)
            .map_or_else(|| "-".into(), |t| human_until(now, t));
        rows.push(vec![
            m["name"].as_str().unwrap_or("?").to_string(),
            digest
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect(),
            human_bytes(size),
            processor,
            m["context_length"]
                .as_u64()
                .map_or_else(|| "-".into(), |c| c.to_string()),
            until,
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// `http://host:port` from a flag or `SMELT_HOST`/`OLLAMA_HOST`, with a wildcard bind address
/// turned into loopback.
fn server_url(flag: Option<&str>) -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let raw = flag
        .map(str::to_string)
        .or_else(|| env("SMELT_HOST"))
        .or_else(|| env("OLLAMA_HOST"));
    let raw = raw.unwrap_or_else(|| "127.0.0.1:11434".into());
    let (scheme, rest) = raw.split_once("://").unwrap_or(("http", &raw));
    let rest = rest.trim_end_matches('/');
    let rest = rest.replacen("0.0.0.0", "127.0.0.1", 1);
    let with_port = if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        rest
    } else {
        format!("{rest}:11434")
    };
    format!("{scheme}://{with_port}")
}

// ------------------------------------------------------------------------------------------------
// Progress display: a bar per layer on a terminal, quiet lines otherwise.

/// Shows [`PullProgress`] events on stderr.
pub struct Progress {
    tty: bool,
    bar: Option<Bar>,
    last_status: String,
}

struct Bar {
    status: String,
    total: u64,
    completed: u64,
    first_completed: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            bar: None,
            last_status: String::new(),
        }
    }

    pub fn update(&mut self, p: &PullProgress) {
        match (p.digest.is_some(), p.total, p.completed) {
            (true, Some(total), Some(completed)) => self.update_bar(&p.status, total, completed),
            _ => {
                self.end_bar();
                if p.status != self.last_status {
                    eprintln!("{}", p.status);
                    self.last_status = p.status.clone();
                }
            }
        }
    }

    /// Ends the last bar; call once the operation returns.
    pub fn finish(&mut self) {
        self.end_bar();
    }

    fn update_bar(&mut self, status: &str, total: u64, completed: u64) {
        if self.bar.as_ref().is_some_and(|b| b.status != status) {
            self.end_bar();
        }
        let bar = self.bar.get_or_insert_with(|| Bar {
            status: status.to_string(),
            total,
            completed,
            first_completed: completed,
            started: Instant::now(),
            drawn: None,
        });
        bar.completed = completed;
        bar.total = total;
        if self.tty
            && bar
                .drawn
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            draw(bar, false);
            bar.drawn = Some(Instant::now());
        }
        self.last_status = status.to_string();
    }

    fn end_bar(&mut self) {
        let Some(bar) = self.bar.take() else { return };
        if self.tty {
            draw(&bar, true);
        } else {
            let secs = bar.started.elapsed().as_secs_f64();
            let timing = if bar.completed > bar.first_completed {
                format!(" in {secs:.1}s")
            } else {
                String::new()
            };
            eprintln!(
                "{} {} / {}{timing}",
                bar.status,
                human_bytes(bar.completed),
                human_bytes(bar.total)
            );
        }
    }
}

fn draw(bar: &Bar, last: bool) {
    const WIDTH: u64 = 25;
    let total = bar.total.max(1);
    let pct = bar.completed.min(total) * 100 / total;
    let filled = (bar.completed.min(total) * WIDTH / total) as usize;
    let cells: String = "█".repeat(filled) + &" ".repeat(WIDTH as usize - filled);
    let secs = bar.started.elapsed().as_secs_f64();
    let rate = (bar.completed - bar.first_completed) as f64 / secs.max(1e-3);
    let mut line = format!(
        "{} {pct:>3}% ▕{cells}▏ {}/{}",
        bar.status,
        human_bytes(bar.completed),
        human_bytes(bar.total)
    );
    if rate > 0.0 && secs > 0.2 {
        let eta = (bar.total.saturating_sub(bar.completed)) as f64 / rate;
        line.push_str(&format!("  {}/s", human_bytes(rate as u64)));
        if !last {
            line.push_str(&format!(
                "  {}",
                human_duration(Duration::from_secs_f64(eta))
            ));
        }
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{line}{}", if last { "\n" } else { "" });
    let _ = err.flush();
}

// ------------------------------------------------------------------------------------------------
// Formatting helpers

/// Decimal units, as Ollama prints sizes: `98 MB`, `1.2 GB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn human_span(secs: u64) -> String {
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    match secs {
        0..=59 => plural(secs, "second"),
        60..=3599 => plural(secs / 60, "minute"),
        3600..=86_399 => plural(secs / 3600, "hour"),
        86_400..=2_591_999 => plural(secs / 86_400, "day"),
        2_592_000..=31_535_999 => plural(secs / 2_592_000, "month"),
        _ => plural(secs / 31_536_000, "year"),
    }
}

/// `2 minutes ago`, as `ollama list` says.
pub fn human_since(now: SystemTime, then: SystemTime) -> String {
    match now.duration_since(then) {
        Ok(d) if d.as_secs() >= 1 => format!("{} ago", human_span(d.as_secs())),
        _ => "just now".into(),
    }
}

fn human_until(now: SystemTime, then: SystemTime) -> String {
    match then.duration_since(now) {
        Ok(d) if d.as_secs() > 100 * 365 * 86_400 => "forever".into(),
        Ok(d) => format!("{} from now", human_span(d.as_secs())),
        Err(_) => "expired".into(),
    }
}

/// `2026-11-26T02:10:00.5+01:00` (or `Z`) to a time; `None` when malformed.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let (time, offset) = match rest.find(['Z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "Z"),
    };
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    let offset_secs = match offset {
        "Z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days since the epoch from a civil date (proleptic Gregorian calendar).
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_secs_f64(sec))
}

/// Left-aligned columns, four spaces apart, the last column unpadded.
fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, |r| r.len());
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}    ", w = widths[c]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(human_bytes(98_362_432), "98 MB");
        assert_eq!(human_bytes(1_234_000_000), "1.2 GB");
        assert_eq!(human_bytes(512), "512 B");
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            human_since(now, now - Duration::from_secs(120)),
            "2 minutes ago"
        );
        assert_eq!(human_since(now, now), "just now");
        assert_eq!(
            human_until(now, now + Duration::from_secs(3600)),
            "1 hour from now"
        );
    }

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(86_401));
        let t = parse_rfc3339("2026-11-26T02:10:00.5+01:00").unwrap();
        let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert_eq!(secs, 1_795_655_400.5); // 01:10:00.5 UTC
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn server_urls() {
        assert_eq!(server_url(Some("0.0.0.0:11434")), "http://127.0.0.1:11434");
        assert_eq!(
            server_url(Some("https://example.org")),
            "https://example.org:11434"
        );
        assert_eq!(
            server_url(Some("http://10.0.0.2:8080/")),
            "http://10.0.0.2:8080"
        );
    }
}
