//! `cargo xtask`: set up a fresh machine, build (eBPF with nightly, the rest with
//! stable), test, run the lab and the benchmarks.
//!
//! - `cargo xtask setup`  install what is missing (Debian packages as root,
//!   nightly rust-src, bpf-linker built against Debian's LLVM 22)
//! - `cargo xtask build`  the eBPF objects and the `smtp-edge` binary
//! - `cargo xtask test`   fmt, clippy, docs, every unit and integration test
//! - `cargo xtask run [--duration SECS]`  the lab
//! - `cargo xtask bench xdp`  the gate's benchmarks (last line: JSON)
//! - `cargo xtask bench smtp-in`  the receiving side against Postfix (last line: JSON)
//! - `cargo xtask bench relay`  the whole relay against Postfix (last line: JSON)
//! - `cargo xtask bench queue`  the queue with 100,000 deferred messages (last line: JSON)
//! - `cargo xtask fuzz [--minutes N] [TARGET]`  every fuzz target in turn
//!   (last line: JSON with executions and minutes per target)
//! - `cargo xtask deb`  the Debian package (cargo-deb) in target/debian

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing prerequisites.
    Setup,
    /// Build the eBPF objects and the workspace.
    Build {
        /// Release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run formatting and lint checks and every test.
    Test,
    /// Bring up the lab (namespaces, gate, senders, on-prem server).
    Run {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Run the fuzz targets (cargo-fuzz, nightly), one after the other.
    Fuzz {
        /// Minutes per target.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Only this target (default: all of smtp-edge/fuzz/fuzz_targets).
        target: Option<String>,
    },
    /// Build the Debian package (target/debian/smtp-edge_VERSION-1_ARCH.deb).
    Deb,
    /// Benchmarks.
    Bench {
        /// Which one: xdp, smtp-in, relay or queue.
        which: String,
        /// Extra arguments passed to the benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Debian packages a fresh machine needs: bpf-linker's LLVM, network tools,
/// and the real SMTP peers used by tests and the lab.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "iputils-ping",
    "nftables",
    "postfix",
    "swaks",
    "libnet-ssleay-perl",
    "openssl",
    // gnutls-cli: a second TLS stack presenting client certificates.
    "gnutls-bin",
    // Exim (tests/tests/peers.rs) is not installed: its package conflicts
    // with postfix's. tests/src/exim.rs fetches it with `apt-get download`
    // into target/exim4-deb/ and runs it from there, in a mount namespace
    // (`unshare`, `mount`) with a passwd copy naming its user.
    "mount",
    "nsd",
    // systemd-analyze (the unit's test), setpriv and unshare (least
    // privilege), dpkg-deb (the package's test).
    "systemd",
    "util-linux",
    "dpkg",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo_home_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect()
}

fn setup() -> Result<()> {
    let missing = missing_packages();
    if !missing.is_empty() {
        let list = missing.join(" ");
        if !is_root() {
            bail!(
                "missing Debian packages: {list}\nrun as root: apt-get update && apt-get install -y {list}"
            );
        }
        // Postfix asks how to configure itself; the tests and the lab run their
        // own instances, so the system one stays unconfigured.
        let preseed = "postfix postfix/main_mailer_type select No configuration\n";
        let mut child = Command::new("debconf-set-selections")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("debconf-set-selections")?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("debconf stdin")?
            .write_all(preseed.as_bytes())?;
        child.wait()?;
        status(Command::new("apt-get").args(["update", "-qq"]))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup (the nightly toolchain builds the eBPF program)")?;
    if !components.status.success() {
        bail!("the nightly toolchain is missing: rustup toolchain install nightly");
    }
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let have_linker = Command::new("bpf-linker").arg("--version").output().is_ok()
        || cargo_home_bin("bpf-linker").is_file();
    if !have_linker {
        status(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    mount_bpffs()?;
    Ok(())
}

fn mount_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if is_root()
        && !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args).current_dir(root());
    c
}

fn build(release: bool) -> Result<PathBuf> {
    setup()?;
    // smtp-edge's build script builds the XDP object with nightly (into
    // target/ebpf) and embeds it.
    let mut args = vec![
        "build",
        "--workspace",
        "--exclude",
        "smtp-edge-ebpf",
        "--bins",
    ];
    if release {
        args.push("--release");
    }
    status(&mut cargo(&args))?;
    let profile = if release { "release" } else { "debug" };
    Ok(root().join("target").join(profile))
}

fn test() -> Result<()> {
    let bin_dir = build(false)?;
    status(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
    status(&mut cargo(&[
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The API documentation builds without a warning (broken links fail).
    status(cargo(&["doc", "-p", "smtp-edge", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"))?;
    // The fuzz targets (their own workspace) must keep building; running them
    // is `cargo +nightly fuzz run command|data` in smtp-edge/fuzz.
    status(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "build",
                "--manifest-path",
                "smtp-edge/fuzz/Cargo.toml",
                "--bins",
                "--locked",
            ])
            .current_dir(root())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO"),
    )?;
    // The package, for tests/tests/package.rs.
    let deb = deb()?;
    status(
        cargo(&["test", "--workspace", "--exclude", "smtp-edge-ebpf"])
            .env("SMTP_EDGE_BIN", bin_dir.join("smtp-edge"))
            .env("SMTP_EDGE_DEB", &deb),
    )?;
    // The lab as an end-to-end test: every path through the real daemon;
    // it exits non-zero when one does not behave.
    status(
        Command::new(bin_dir.join("smtp-edge-lab"))
            .args(["--duration", "30"])
            .env("SMTP_EDGE_BIN", bin_dir.join("smtp-edge")),
    )
}

/// Builds the .deb: the release binary, its generated man pages (gzip -9n,
/// as Debian policy asks), completions and example configuration, then
/// cargo-deb (installed when missing). Returns the package's path.
fn deb() -> Result<PathBuf> {
    let bin_dir = build(true)?;
    if Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        status(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))?;
    }
    let assets = bin_dir.join("deb-assets");
    let _ = std::fs::remove_dir_all(&assets);
    status(
        Command::new(bin_dir.join("smtp-edge"))
            .arg("generate-assets")
            .arg(&assets),
    )?;
    for e in std::fs::read_dir(assets.join("man"))? {
        let p = e?.path();
        status(Command::new("gzip").args(["-9nf"]).arg(&p))?;
    }
    let out = root().join("target/debian");
    let _ = std::fs::remove_dir_all(&out);
    status(
        cargo(&["deb", "-p", "smtp-edge", "--no-build", "--output"])
            .arg(&out)
            .current_dir(root()),
    )?;
    let deb = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("cargo deb made no .deb")?;
    Ok(deb)
}

fn run_tool(bin: &str, release: bool, args: &[String]) -> Result<()> {
    let dir = build(release)?;
    status(
        Command::new(dir.join(bin))
            .args(args)
            .env("SMTP_EDGE_BIN", dir.join("smtp-edge")),
    )
}

/// The fuzz targets: the file names in smtp-edge/fuzz/fuzz_targets.
fn fuzz_targets() -> Result<Vec<String>> {
    let dir = root().join("smtp-edge/fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Runs each target for `minutes` and reports executions per target.
fn fuzz(minutes: u64, only: Option<String>) -> Result<()> {
    setup()?;
    let have = Command::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let targets = match only {
        Some(t) => vec![t],
        None => fuzz_targets()?,
    };
    let fuzz_dir = root().join("smtp-edge/fuzz");
    let mut report = Vec::new();
    for t in &targets {
        let started = std::time::Instant::now();
        let mut child = Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", t, "--"])
            .arg(format!("-max_total_time={}", minutes * 60))
            .args(["-print_final_stats=1", "-rss_limit_mb=4096"])
            .current_dir(&fuzz_dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cargo fuzz run {t}"))?;
        // libFuzzer reports on stderr: shown as it comes, the final
        // statistics kept.
        let mut executions = 0u64;
        let mut fuzz_secs = None;
        let mut fuzzing = false;
        if let Some(err) = child.stderr.take() {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                // libFuzzer's first words: the target was built and runs.
                fuzzing |= line.starts_with("INFO: ");
                if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
                    executions = v.trim().parse().unwrap_or(executions);
                }
                // "Done N runs in S second(s)": the time spent fuzzing.
                if let Some(rest) = line.strip_prefix("Done ")
                    && let Some((_, secs)) = rest.split_once(" runs in ")
                {
                    fuzz_secs = secs
                        .split_whitespace()
                        .next()
                        .and_then(|s| s.parse::<f64>().ok());
                }
            }
        }
        let ok = child.wait()?.success();
        let secs = fuzz_secs.unwrap_or_else(|| started.elapsed().as_secs_f64());
        eprintln!(
            "fuzz {t}: {executions} executions in {:.1} min ({})",
            secs / 60.0,
            if ok { "no crash" } else { "FAILED" }
        );
        if !ok && !fuzzing {
            bail!("fuzz target {t} did not build or start (see above)");
        }
        if !ok {
            bail!("fuzz target {t} failed; the input is under smtp-edge/fuzz/artifacts/{t}");
        }
        report.push(format!(
            "\"{t}\":{{\"executions\":{executions},\"minutes\":{:.2}}}",
            secs / 60.0
        ));
    }
    println!("{{\"fuzz\":{{{}}}}}", report.join(","));
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::Build { release } => build(release).map(|_| ()),
        Cmd::Test => test(),
        Cmd::Run { duration } => {
            let args: Vec<String> = duration
                .map(|d| vec!["--duration".to_string(), d.to_string()])
                .unwrap_or_default();
            run_tool("smtp-edge-lab", false, &args)
        }
        Cmd::Fuzz { minutes, target } => fuzz(minutes, target),
        Cmd::Deb => deb().map(|p| println!("{}", p.display())),
        Cmd::Bench { which, args } => match which.as_str() {
            "xdp" => run_tool("smtp-edge-bench-xdp", true, &args),
            "smtp-in" => run_tool("smtp-edge-bench-smtp-in", true, &args),
            "relay" => run_tool("smtp-edge-bench-relay", true, &args),
            "queue" => run_tool("smtp-edge-bench-queue", true, &args),
            other => bail!("unknown benchmark `{other}` (known: xdp, smtp-in, relay, queue)"),
        },
    }
}
