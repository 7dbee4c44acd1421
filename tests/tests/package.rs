//! The Debian package `cargo xtask deb` builds (`cargo xtask test` passes its
//! path in SMTP_EDGE_DEB): the files an administrator expects, the
//! conffile, the maintainer scripts (a user of its own, not started on
//! install, the gate detached on removal but not on upgrade), a binary that
//! runs and an example configuration that checks, man pages, completions,
//! and a unit that `systemd-analyze verify` accepts without a word.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deb() -> PathBuf {
    let p = std::env::var_os("SMTP_EDGE_DEB").map(PathBuf::from).expect(
        "SMTP_EDGE_DEB is not set: run through `cargo xtask test` (it builds the package with `cargo xtask deb`)",
    );
    assert!(p.is_file(), "{} does not exist", p.display());
    p
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn extracted() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&root));
    assert!(ok, "{err}");
    (tmp, root)
}

#[test]
fn the_package_holds_what_an_administrator_expects() {
    let (_tmp, root) = extracted();
    for f in [
        "usr/sbin/smtp-edge",
        "etc/smtp-edge/smtp-edge.toml",
        "usr/lib/systemd/system/smtp-edge.service",
        "usr/share/man/man8/smtp-edge.8.gz",
        "usr/share/man/man8/smtp-edge-run.8.gz",
        "usr/share/man/man8/smtp-edge-ranges-update.8.gz",
        "usr/share/man/man8/smtp-edge-connector-test.8.gz",
        "usr/share/man/man8/smtp-edge-queue-list.8.gz",
        "usr/share/bash-completion/completions/smtp-edge",
        "usr/share/zsh/vendor-completions/_smtp-edge",
        "usr/share/fish/vendor_completions.d/smtp-edge.fish",
        "usr/share/doc/smtp-edge/copyright",
        "usr/share/doc/smtp-edge/README.md",
    ] {
        assert!(root.join(f).is_file(), "{f} missing from the package");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| {
        std::fs::metadata(root.join(f))
            .expect("file")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/sbin/smtp-edge"), 0o755);
    assert_eq!(mode("etc/smtp-edge/smtp-edge.toml"), 0o640);
    // The binary runs; the configuration it ships checks.
    let bin = root.join("usr/sbin/smtp-edge");
    let (ok, out, err) = run(Command::new(&bin).arg("--version"));
    assert!(ok && out.contains(env!("CARGO_PKG_VERSION")), "{out}{err}");
    let (ok, out, err) = run(Command::new(&bin)
        .args(["config", "check"])
        .arg(root.join("etc/smtp-edge/smtp-edge.toml")));
    assert!(ok, "{out}{err}");
    // Man pages are gzip'd roff with the right name and section.
    let (ok, page, err) =
        run(Command::new("zcat").arg(root.join("usr/share/man/man8/smtp-edge-ranges-update.8.gz")));
    assert!(ok, "{err}");
    assert!(page.contains(".TH smtp-edge-ranges-update 8"), "{page}");
    assert!(page.contains("accept\\-shrink"), "{page}");
    // Completions know the subcommands.
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/smtp-edge"))
            .expect("bash");
    assert!(
        bash.contains("connector") && bash.contains("ranges"),
        "bash completion"
    );
    let fish =
        std::fs::read_to_string(root.join("usr/share/fish/vendor_completions.d/smtp-edge.fish"))
            .expect("fish");
    assert!(fish.contains("accept-shrink"), "fish completion");
}

#[test]
fn control_files_and_maintainer_scripts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let control = tmp.path().join("DEBIAN");
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-e").arg(deb()).arg(&control));
    assert!(ok, "{err}");
    let read = |f: &str| std::fs::read_to_string(control.join(f)).unwrap_or_default();
    let c = read("control");
    assert!(
        c.contains("Package: smtp-edge") && c.contains("Section: mail"),
        "{c}"
    );
    assert!(c.contains("adduser"), "{c}");
    assert_eq!(read("conffiles").trim(), "/etc/smtp-edge/smtp-edge.toml");
    let postinst = read("postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(
        postinst.contains(
            "install -d -o smtp-edge -g smtp-edge -m 0700 /var/lib/smtp-edge /var/spool/smtp-edge"
        ),
        "{postinst}"
    );
    assert!(
        !postinst.contains("deb-systemd-invoke start"),
        "must not start on install:\n{postinst}"
    );
    let prerm = read("prerm");
    assert!(
        prerm.contains(r#"[ "$1" = "remove" ]"#) && prerm.contains("filter detach"),
        "{prerm}"
    );
    let postrm = read("postrm");
    assert!(postrm.contains("still holds mail"), "{postrm}");
    for s in ["postinst", "prerm", "postrm"] {
        let (ok, _, err) = run(Command::new("sh").arg("-n").arg(control.join(s)));
        assert!(ok, "{s}: {err}");
    }
}

fn unit(root: &Path, dir: &Path) -> PathBuf {
    // The unit names the installed binary; point it at the extracted one
    // (verify checks that commands exist).
    let text = std::fs::read_to_string(root.join("usr/lib/systemd/system/smtp-edge.service"))
        .expect("unit");
    let path = dir.join("smtp-edge.service");
    std::fs::write(
        &path,
        text.replace(
            "/usr/sbin/smtp-edge",
            &root.join("usr/sbin/smtp-edge").display().to_string(),
        ),
    )
    .expect("write unit");
    path
}

#[test]
fn the_unit_verifies_and_grants_four_capabilities_only() {
    let (tmp, root) = extracted();
    let path = unit(&root, tmp.path());
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path));
    assert!(ok, "{out}{err}");
    assert!(
        out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify said:\n{out}{err}"
    );
    let text = std::fs::read_to_string(&path).expect("unit");
    let caps = "CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_BIND_SERVICE";
    assert!(
        text.contains(&format!("CapabilityBoundingSet={caps}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("AmbientCapabilities={caps}")),
        "{text}"
    );
    for line in [
        "User=smtp-edge",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "UMask=0077",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallFilter=@system-service bpf",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }
    assert!(text.contains(
        "ReadWritePaths=/var/spool/smtp-edge /var/lib/smtp-edge /run/smtp-edge /sys/fs/bpf"
    ));
    assert!(
        !text.contains("CAP_SYS_ADMIN\n") && !text.contains("CAP_SYS_ADMIN "),
        "no CAP_SYS_ADMIN"
    );
    // systemd's own exposure score for the sandbox (0 best, 10 worst).
    let (_, out, err) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path));
    let all = format!("{out}{err}");
    let score: f64 = all
        .split("Overall exposure level for smtp-edge.service: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{all}"));
    assert!(score <= 3.0, "exposure {score}:\n{all}");
}
