//! Processes the manager runs: operator commands (`failover_command` and
//! friends, with Pgpool-II's placeholders) and PostgreSQL's own tools
//! (`pg_ctl`, `pg_rewind`, `pg_basebackup`, `pg_controldata`), the latter as
//! the owner of the data directory they work on.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::Command;

use super::executor::ActionError;

/// Values of a command's placeholders; absent ones expand to nothing.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// `%d %h %p %D`: the failed (or acted-on) node.
    pub node_id: Option<usize>,
    pub node_host: Option<String>,
    pub node_port: Option<u16>,
    pub node_dir: Option<String>,
    /// `%m %H %r %R`: the new main (primary) node.
    pub new_id: Option<usize>,
    pub new_host: Option<String>,
    pub new_port: Option<u16>,
    pub new_dir: Option<String>,
    /// `%M`: the old main node; `%P %N %S`: the old primary.
    pub old_main_id: Option<usize>,
    pub old_id: Option<usize>,
    pub old_host: Option<String>,
    pub old_port: Option<u16>,
}

/// A hook command ready to run: the script for `sh -c`, whose
/// placeholders became references to environment variables, the
/// variables, and the command with the values written in (for logs).
#[derive(Debug, Clone)]
pub struct Hook {
    pub script: String,
    pub env: Vec<(&'static str, String)>,
    pub shown: String,
}

/// Each placeholder's letter, its environment variable, and its value.
fn placeholders(v: &Vars) -> [(char, &'static str, String); 12] {
    fn o<T: ToString>(x: &Option<T>) -> String {
        x.as_ref().map(ToString::to_string).unwrap_or_default()
    }
    [
        ('d', "TIDEPOOL_NODE_ID", o(&v.node_id)),
        ('h', "TIDEPOOL_NODE_HOST", o(&v.node_host)),
        ('p', "TIDEPOOL_NODE_PORT", o(&v.node_port)),
        ('D', "TIDEPOOL_NODE_DIR", o(&v.node_dir)),
        ('m', "TIDEPOOL_NEW_ID", o(&v.new_id)),
        ('H', "TIDEPOOL_NEW_HOST", o(&v.new_host)),
        ('r', "TIDEPOOL_NEW_PORT", o(&v.new_port)),
        ('R', "TIDEPOOL_NEW_DIR", o(&v.new_dir)),
        ('M', "TIDEPOOL_OLD_MAIN_ID", o(&v.old_main_id)),
        ('P', "TIDEPOOL_OLD_ID", o(&v.old_id)),
        ('N', "TIDEPOOL_OLD_HOST", o(&v.old_host)),
        ('S', "TIDEPOOL_OLD_PORT", o(&v.old_port)),
    ]
}

/// `template` with Pgpool-II's placeholders: `%d %h %p %D` (failed node),
/// `%m %H %r %R` (new main node), `%M` (old main), `%P %N %S` (old
/// primary), `%%`; unknown ones are kept as they are. A value never
/// becomes shell text: each placeholder is replaced by a reference to its
/// environment variable, quoted for where it stands (unquoted, inside
/// double quotes, inside single quotes), so a host name such as
/// `x; touch /tmp/pwned` is one argument, never a command. The variables
/// are set for every hook, so scripts may read them directly.
pub fn expand(template: &str, v: &Vars) -> Hook {
    /// Where a character stands for `sh`.
    #[derive(Clone, Copy, PartialEq)]
    enum Quote {
        No,
        Single,
        Double,
    }
    /// A nesting level: the script, a `$( … )` or a `` ` … ` ``, each
    /// with its own quoting.
    #[derive(Clone, Copy, PartialEq)]
    enum Level {
        Top,
        Paren,
        Backtick,
    }
    let values = placeholders(v);
    let mut script = String::with_capacity(template.len());
    let mut shown = String::with_capacity(template.len());
    let mut levels = vec![(Level::Top, Quote::No)];
    let mut prev = ' ';
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        let (level, quote) = *levels.last().expect("the top level stays");
        if c != '%' {
            script.push(c);
            shown.push(c);
            let set = |q: Quote, levels: &mut Vec<(Level, Quote)>| {
                levels.last_mut().expect("the top level stays").1 = q;
            };
            match (quote, c) {
                (Quote::No | Quote::Double, '\\') => {
                    if let Some(next) = chars.next() {
                        script.push(next);
                        shown.push(next);
                    }
                }
                (Quote::No | Quote::Double, '$') if chars.peek() == Some(&'(') => {
                    let open = chars.next().expect("peeked");
                    script.push(open);
                    shown.push(open);
                    levels.push((Level::Paren, Quote::No));
                }
                (Quote::No, ')') if level == Level::Paren => {
                    levels.pop();
                }
                (Quote::No, '`') if level == Level::Backtick => {
                    levels.pop();
                }
                (Quote::No | Quote::Double, '`') => levels.push((Level::Backtick, Quote::No)),
                (Quote::No, '#')
                    if prev.is_whitespace() || matches!(prev, ';' | '&' | '|' | '(') =>
                {
                    // A comment: the rest of the line is nobody's text.
                    for rest in chars.by_ref() {
                        script.push(rest);
                        shown.push(rest);
                        if rest == '\n' {
                            break;
                        }
                    }
                }
                (Quote::No, '\'') => set(Quote::Single, &mut levels),
                (Quote::No, '"') => set(Quote::Double, &mut levels),
                (Quote::Single, '\'') | (Quote::Double, '"') => set(Quote::No, &mut levels),
                _ => {}
            }
            prev = c;
            continue;
        }
        prev = c;
        let Some(k) = chars.next() else {
            script.push('%');
            shown.push('%');
            break;
        };
        match values.iter().find(|(letter, _, _)| *letter == k) {
            Some((_, var, value)) => {
                script.push_str(&match quote {
                    Quote::No => format!("\"${{{var}}}\""),
                    Quote::Double => format!("${{{var}}}"),
                    Quote::Single => format!("'\"${{{var}}}\"'"),
                });
                shown.push_str(value);
            }
            None if k == '%' => {
                script.push('%');
                shown.push('%');
            }
            None => {
                script.push('%');
                script.push(k);
                shown.push('%');
                shown.push(k);
            }
        }
    }
    Hook {
        script,
        env: values
            .into_iter()
            .map(|(_, var, value)| (var, value))
            .collect(),
        shown,
    }
}

/// Runs `hook` with `sh -c`, bounded by `timeout`; fails on a non-zero exit.
pub async fn shell(hook: &Hook, timeout: Duration) -> Result<String, ActionError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&hook.script);
    for (k, v) in &hook.env {
        cmd.env(k, v);
    }
    run(cmd, &hook.shown, timeout).await
}

async fn run(mut cmd: Command, shown: &str, timeout: Duration) -> Result<String, ActionError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: servers it starts must outlive tidepool.
        .process_group(0);
    let fail = |reason: String| ActionError::Command {
        command: shown.to_string(),
        reason,
    };
    tracing::info!(command = %shown, "running");
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| fail(format!("timed out after {timeout:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(fail(format!("{}: {}", out.status, tail.join(" / "))));
    }
    Ok(stdout)
}

/// PostgreSQL's server tools, run as the owner of a data directory.
#[derive(Debug, Clone)]
pub struct PgTools {
    bin_dir: Option<PathBuf>,
    timeout: Duration,
}

/// Who owns a data directory, and whether tidepool must switch to them.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    switch: bool,
}

fn owner_of(dir: &Path) -> Result<Owner, ActionError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        ActionError::Refused(format!(
            "data directory {} is not reachable: {e}",
            dir.display()
        ))
    })?;
    // /proc/self belongs to this process's effective user.
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    Ok(Owner {
        uid: meta.uid(),
        gid: meta.gid(),
        switch: me == 0 && meta.uid() != 0,
    })
}

impl PgTools {
    /// `bin_dir` from the configuration, else the newest
    /// `/usr/lib/postgresql/*/bin`, else `PATH`.
    pub fn new(bin_dir: Option<&str>, timeout: Duration) -> PgTools {
        let bin_dir = bin_dir.map(PathBuf::from).or_else(|| {
            let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("pg_ctl").exists())
                .collect();
            v.sort_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            });
            v.pop()
        });
        PgTools { bin_dir, timeout }
    }

    fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Runs `tool args` as the owner of `data_dir`, with `env` added.
    pub async fn run(
        &self,
        data_dir: &Path,
        tool: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<String, ActionError> {
        let owner = owner_of(data_dir)?;
        let program = self.program(tool);
        let mut cmd = Command::new(&program);
        cmd.args(args).current_dir("/");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if owner.switch {
            cmd.uid(owner.uid).gid(owner.gid);
            // Not root's home: libpq looks there for ~/.postgresql client
            // certificates and fails on a directory it may not read.
            if let Some(parent) = data_dir.parent() {
                cmd.env("HOME", parent);
            }
        }
        let shown = format!("{} {}", program.display(), args.join(" "));
        run(cmd, &shown, self.timeout).await
    }

    /// Whether a server runs on `data_dir`.
    pub async fn running(&self, data_dir: &Path) -> bool {
        let d = data_dir.to_string_lossy();
        self.run(data_dir, "pg_ctl", &["status", "-D", &d], &[])
            .await
            .is_ok()
    }

    /// Stops the server of `data_dir` (fast, then immediate) if it runs.
    pub async fn stop(&self, data_dir: &Path) -> Result<(), ActionError> {
        clear_stale_pid(data_dir);
        if !self.running(data_dir).await {
            return Ok(());
        }
        let d = data_dir.to_string_lossy();
        let fast = ["stop", "-D", &d, "-m", "fast", "-w", "-t", "60"];
        if self.run(data_dir, "pg_ctl", &fast, &[]).await.is_ok() {
            return Ok(());
        }
        let immediate = ["stop", "-D", &d, "-m", "immediate", "-w", "-t", "30"];
        let r = self
            .run(data_dir, "pg_ctl", &immediate, &[])
            .await
            .map(|_| ());
        if r.is_err() && clear_stale_pid(data_dir) {
            return Ok(());
        }
        r
    }

    /// Starts the server of `data_dir`, its output going to `log`.
    pub async fn start(&self, data_dir: &Path, log: &Path) -> Result<(), ActionError> {
        let d = data_dir.to_string_lossy();
        let l = log.to_string_lossy();
        let secs = self.timeout.as_secs().max(10).to_string();
        let args = ["start", "-D", &d, "-l", &l, "-w", "-t", &secs];
        self.run(data_dir, "pg_ctl", &args, &[]).await.map(|_| ())
    }

    /// `Latest checkpoint location` and whether the cluster was shut down
    /// cleanly, from `pg_controldata`.
    pub async fn checkpoint(&self, data_dir: &Path) -> Result<(String, bool), ActionError> {
        let d = data_dir.to_string_lossy();
        let out = self
            .run(data_dir, "pg_controldata", &["-D", &d], &[("LC_ALL", "C")])
            .await?;
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim_start_matches(':').trim().to_string())
        };
        let location = field("Latest checkpoint location").ok_or_else(|| ActionError::Command {
            command: "pg_controldata".into(),
            reason: "no `Latest checkpoint location` in its output".into(),
        })?;
        let clean = field("Database cluster state").as_deref() == Some("shut down");
        Ok((location, clean))
    }
}

/// Removes the `postmaster.pid` (and its socket lock file) of a server that
/// crashed: its process is gone or a zombie, which `pg_ctl` and the server
/// itself would take for a live one. Returns whether it did.
fn clear_stale_pid(data_dir: &Path) -> bool {
    let pid_file = data_dir.join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    let Some(pid) = lines.first().and_then(|l| l.trim().parse::<u32>().ok()) else {
        return false;
    };
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false);
    if alive {
        return false;
    }
    tracing::info!(pid, file = %pid_file.display(), "removing the pid file of a crashed server");
    let _ = std::fs::remove_file(&pid_file);
    if let (Some(port), Some(sock)) = (lines.get(3), lines.get(4)) {
        let sock = sock.trim();
        if !sock.is_empty() {
            let _ = std::fs::remove_file(
                Path::new(sock).join(format!(".s.PGSQL.{}.lock", port.trim())),
            );
        }
    }
    true
}

/// Writes `contents` to `path` (appending when `append`) and gives the file
/// to the owner of `data_dir`.
pub fn write_owned(
    data_dir: &Path,
    path: &Path,
    contents: &str,
    append: bool,
) -> Result<(), ActionError> {
    use std::io::Write;
    let owner = owner_of(data_dir)?;
    let fail =
        |e: std::io::Error| ActionError::Refused(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(fail)?;
    f.write_all(contents.as_bytes()).map_err(fail)?;
    if owner.switch {
        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpool_placeholders_expand() {
        let v = Vars {
            node_id: Some(0),
            node_host: Some("10.0.0.1".into()),
            node_port: Some(5432),
            node_dir: Some("/data/0".into()),
            new_id: Some(1),
            new_host: Some("10.0.0.2".into()),
            new_port: Some(5433),
            new_dir: None,
            old_main_id: Some(0),
            old_id: Some(0),
            old_host: Some("10.0.0.1".into()),
            old_port: Some(5432),
        };
        let hook = expand(
            "f %d %h %p %D -> %m %H %r [%R] old %M %P %N %S 100%% %x %",
            &v,
        );
        assert_eq!(
            hook.shown,
            "f 0 10.0.0.1 5432 /data/0 -> 1 10.0.0.2 5433 [] old 0 0 10.0.0.1 5432 100% %x %"
        );
        assert!(
            hook.script
                .starts_with("f \"${TIDEPOOL_NODE_ID}\" \"${TIDEPOOL_NODE_HOST}\"")
        );
        assert!(hook.env.contains(&("TIDEPOOL_NEW_DIR", String::new())));
    }

    #[tokio::test]
    async fn a_host_name_in_a_placeholder_is_one_argument_never_shell() {
        let dir = tempfile::tempdir().unwrap();
        let pwned = dir.path().join("pwned");
        let evil = format!(
            "x; touch {p}; echo $(touch {p}) `touch {p}` ' \" \\",
            p = pwned.display()
        );
        let v = Vars {
            node_host: Some(evil.clone()),
            new_host: Some("10.0.0.2".into()),
            ..Vars::default()
        };
        // Unquoted, in double quotes, in single quotes, glued to text,
        // inside command substitutions, after a comment.
        for template in [
            "printf '%s|' %h %H",
            "printf '%s|' \"%h\" \"%H\"",
            "printf '%s|' '%h' '%H'",
            "printf '%s|' host=%h: \"at %H\"",
            "printf '%s|' \"$(printf %s \"%h\")\" \"$(echo '%H')\"",
            "printf '%s|' \"$(printf %s '%h')\" `printf %s %H`",
            "# don't forget: %h\nprintf '%s|' %h %H",
        ] {
            let out = shell(&expand(template, &v), Duration::from_secs(5))
                .await
                .unwrap();
            assert!(!pwned.exists(), "{template} ran the host name");
            let args: Vec<&str> = out.trim_end_matches('|').split('|').collect();
            assert_eq!(args.len(), 2, "{template}: {out:?}");
            assert!(args[0].contains(&evil), "{template}: {out:?}");
            assert!(args[1].ends_with("10.0.0.2"), "{template}: {out:?}");
        }
        // Scripts may read the values from the environment.
        let out = shell(
            &expand("printf %s \"$TIDEPOOL_NODE_HOST\"", &v),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out, evil);
        assert!(!pwned.exists());
    }

    #[tokio::test]
    async fn failing_commands_report_their_status_and_stderr() {
        let sh = |c: &str| expand(c, &Vars::default());
        let e = shell(&sh("echo oops >&2; exit 3"), Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("oops") && e.contains('3'), "{e}");
        assert_eq!(
            shell(&sh("echo hi"), Duration::from_secs(5)).await.unwrap(),
            "hi\n"
        );
        let e = shell(&sh("sleep 5"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}
