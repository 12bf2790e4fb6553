//! The `tidepool` command: `run`, `check-config`, `ctl`, `import-pgpool`.

/// Small, short-lived allocations on every worker (frames, buffers,
/// statement names): mimalloc, with per-thread heaps and no lock on the
/// common path.
#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc asked the way the system allocator is: a plain `mi_malloc`
/// when the alignment is one every block of that size has (as `malloc`'s,
/// 16 bytes), the aligned calls only for larger alignments. The aligned
/// calls take a slower path whenever a page's free list is empty, which a
/// proxy allocating and freeing per message meets often.
struct Mimalloc;

/// The alignment every mimalloc block of at least this size has.
const MIN_ALIGN: usize = 16;

/// Whether a block of `size` bytes aligned to `align` comes plain.
fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

/// A new block for `layout`: from `plain_call` when the alignment allows
/// it, from `aligned_call` otherwise (allocated or zeroed alike).
///
/// # Safety
/// As [`std::alloc::GlobalAlloc::alloc`].
#[inline(always)]
unsafe fn allocate(
    layout: std::alloc::Layout,
    plain_call: unsafe extern "C" fn(usize) -> *mut std::ffi::c_void,
    aligned_call: unsafe extern "C" fn(usize, usize) -> *mut std::ffi::c_void,
) -> *mut u8 {
    // SAFETY: plain calls into mimalloc.
    unsafe {
        if plain(layout.align(), layout.size()) {
            plain_call(layout.size()).cast()
        } else {
            aligned_call(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every call is passed to mimalloc, whose blocks have the
// alignment asked for: by the aligned calls, or by `plain`'s rule.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: as `alloc`.
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: as `alloc_zeroed`.
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from mimalloc.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: `ptr` came from mimalloc; the new block keeps the
        // alignment by the same rule as `alloc`.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

use std::{os::unix::fs::OpenOptionsExt, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::{net::TcpListener, signal::unix::SignalKind, sync::watch};

use tidepool::{
    admin,
    app::{self, Shared},
    config::{Config, ConfigError, LogFormat, Scheduler},
    ctl, server,
};

#[derive(Parser)]
#[command(
    name = "tidepool",
    version,
    about = "High-availability pooling proxy for PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve clients until SIGINT or SIGTERM; SIGHUP reloads the configuration.
    Run {
        #[arg(short, long, env = "TIDEPOOL_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0, or list every error with its key.
    CheckConfig {
        #[arg(short, long, env = "TIDEPOOL_CONFIG")]
        config: PathBuf,
    },
    /// Control a running tidepool through its admin HTTP API.
    Ctl(ctl::CtlArgs),
    /// Convert a Pgpool-II configuration to tidepool's: the TOML on stdout
    /// (or -o), a warning on stderr for each setting not carried over.
    ImportPgpool(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// pgpool.conf
    pgpool_conf: PathBuf,
    /// pool_hba.conf, for [[hba]] rules
    #[arg(long)]
    hba: Option<PathBuf>,
    /// pool_passwd, for [[users]]
    #[arg(long)]
    passwd: Option<PathBuf>,
    /// The pgpoolkey file, to read AES-encrypted passwords
    #[arg(long)]
    pgpoolkey: Option<PathBuf>,
    /// This node's index among the watchdog's hostnameN (pgpool_node_id)
    #[arg(long, default_value_t = 0)]
    node_id: usize,
    /// Write the TOML here instead of stdout
    #[arg(short, long)]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Ctl(args) => run_ctl(args),
        Command::ImportPgpool(args) => import_pgpool(&args),
        Command::Run { config } => {
            let cfg = match Config::load_with(&config, &tidepool::app::runtime::checks) {
                Ok(c) => c,
                Err(errors) => {
                    print_errors(&config, &errors);
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg);
            for w in tidepool::config::validate::file_warnings(&cfg, &config) {
                tracing::warn!("{w}");
            }
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            match cfg.server.scheduler {
                // Clients are served on worker threads of their own
                // (server::workers); this runtime is the control plane's.
                Scheduler::PerCore => {
                    builder.worker_threads(1);
                }
                Scheduler::WorkStealing => {
                    builder.worker_threads(worker_count(&cfg));
                }
            }
            let runtime = builder.enable_all().build().expect("tokio runtime");
            // The server runs as a task, on the workers: a future given to
            // block_on runs on this main thread, and every accepted client
            // and every finished one would wake it across threads.
            let served = runtime.block_on(async {
                tokio::spawn(run(cfg, config))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("the server task failed: {e}")))
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("tidepool: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn import_pgpool(args: &ImportArgs) -> ExitCode {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let run = || -> Result<(String, Vec<String>), String> {
        let conf = read(&args.pgpool_conf)?;
        let hba = args.hba.as_deref().map(read).transpose()?;
        let passwd = args.passwd.as_deref().map(read).transpose()?;
        let key = args.pgpoolkey.as_deref().map(read).transpose()?;
        // Escalation scripts the configuration names: where it says, or
        // beside pgpool.conf.
        let dir = args
            .pgpool_conf
            .parent()
            .unwrap_or(std::path::Path::new("."));
        let mut scripts = std::collections::BTreeMap::new();
        for s in tidepool::import::conf::settings(&conf) {
            if !s.name.eq_ignore_ascii_case("wd_escalation_command") {
                continue;
            }
            let path = std::path::Path::new(s.value.split_whitespace().next().unwrap_or(""));
            let beside = path.file_name().map(|f| dir.join(f));
            if let Some(text) = std::iter::once(path.to_path_buf())
                .chain(beside)
                .find_map(|p| std::fs::read_to_string(p).ok())
            {
                scripts.insert(s.value.clone(), text);
            }
        }
        let imported = tidepool::import::pgpool(&tidepool::import::Input {
            pgpool_conf: &conf,
            pool_hba: hba.as_deref(),
            pool_passwd: passwd.as_deref(),
            pgpoolkey: key.as_deref().map(|k| k.lines().next().unwrap_or("")),
            node_id: args.node_id,
            scripts,
        });
        Ok((imported.toml, imported.warnings))
    };
    match run() {
        Ok((toml, warnings)) => {
            for w in &warnings {
                eprintln!("tidepool import-pgpool: warning: {w}");
            }
            match &args.output {
                Some(p) => {
                    // It may hold passwords: readable by its owner only.
                    let written = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(p)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, toml.as_bytes()));
                    if let Err(e) = written {
                        eprintln!("tidepool import-pgpool: cannot write {}: {e}", p.display());
                        return ExitCode::FAILURE;
                    }
                }
                None => print!("{toml}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidepool import-pgpool: {e}");
            ExitCode::from(2)
        }
    }
}

/// `ctl` is a short-lived client: one request on a single-threaded runtime.
fn run_ctl(args: ctl::CtlArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(ctl::run(args)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidepool ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load_with(path, &tidepool::app::runtime::checks) {
        Ok(c) => {
            println!(
                "{}: OK ({} backends, {} users, pool mode {:?})",
                path.display(),
                c.backends.len(),
                c.users.len(),
                c.pool.mode
            );
            for w in tidepool::config::validate::file_warnings(&c, path) {
                eprintln!("  warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(path, &errors);
            ExitCode::from(2)
        }
    }
}

fn print_errors(path: &std::path::Path, errors: &[ConfigError]) {
    eprintln!("{}: {} error(s)", path.display(), errors.len());
    for e in errors {
        if e.path.is_empty() {
            eprintln!("  {}", e.message);
        } else {
            eprintln!("  {}: {}", e.path, e.message);
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEPOOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.logging.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Fail points named in `FAILPOINTS` (`name=action;…`, the `fail` crate's
/// syntax), for tests that make a service fail where it would. Debug
/// builds only: a release binary ignores the variable.
fn fail_points_from_env() {
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return;
    };
    for entry in spec.split(';').filter(|e| !e.trim().is_empty()) {
        match entry.split_once('=') {
            Some((name, actions)) => {
                if let Err(e) = fail::cfg(name.trim(), actions.trim()) {
                    tracing::error!(fail_point = name, error = %e, "FAILPOINTS entry ignored");
                } else {
                    tracing::warn!(fail_point = name, actions, "fail point set (FAILPOINTS)");
                }
            }
            None => tracing::error!(entry, "FAILPOINTS entry ignored: expected name=actions"),
        }
    }
}

async fn run(cfg: Config, path: PathBuf) -> anyhow::Result<()> {
    fail_points_from_env();
    let listen = cfg.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
    let admin_listen = cfg.server.admin_listen;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on {admin_listen} (server.admin_listen)"))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Shared::new(cfg, Some(path), shutdown_rx.clone());

    let services = app::services::start(&shared).await?;
    let grace = shared.config.load().server.shutdown_timeout;
    tokio::spawn(handle_signals(shared.clone(), shutdown_tx));
    tokio::spawn(admin::http::serve(admin_listener, shared.clone()));

    let (scheduler, threads) = {
        let cfg = shared.config.load();
        (cfg.server.scheduler, worker_count(&cfg))
    };
    tracing::info!(%listen, %admin_listen, ?scheduler, threads, "tidepool serving");
    match scheduler {
        Scheduler::PerCore => {
            let listener = listener
                .into_std()
                .context("cannot hand the client listener to the workers")?;
            server::workers::serve(listener, shared, threads).await?;
        }
        Scheduler::WorkStealing => server::serve(listener, shared).await,
    }
    // A watchdog leader hands over before it goes; its task bounds that.
    services.shutdown(grace).await;
    tracing::info!("tidepool stopped");
    Ok(())
}

/// Threads that serve clients: `server.worker_threads`, or one per CPU.
fn worker_count(cfg: &Config) -> usize {
    match cfg.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// SIGINT/SIGTERM shut down gracefully; SIGHUP reloads the configuration.
async fn handle_signals(shared: Arc<Shared>, shutdown: watch::Sender<bool>) {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match app::reload(&shared) {
                Ok(outcome) => tracing::info!(?outcome, "configuration reloaded"),
                Err(errors) => {
                    for e in errors {
                        tracing::error!("reload refused, configuration unchanged: {e}");
                    }
                }
            },
        }
    }
    tracing::info!("shutdown requested");
    let _ = shutdown.send(true);
}
