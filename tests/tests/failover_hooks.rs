//! The operator's hooks instead of the built-in actions: `failover_command`
//! promotes, `follow_primary_command` repoints the other standby and
//! `recovery_command` rebuilds the old primary, each given Pgpool-II's
//! placeholders. The hooks record their arguments and do the real work with
//! PostgreSQL's own tools, so the failover and the recovery must succeed
//! through them.

mod failover_support;

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use failover_support::{Extra, FailoverBed, wait};

/// Every placeholder, in Pgpool-II's order, quoted so that empty ones
/// keep their place.
const ALL: &str = r#""%d" "%h" "%p" "%D" "%m" "%H" "%r" "%R" "%M" "%P" "%N" "%S" "%%""#;

/// The hook: `hook.sh KIND ARGS...` appends `KIND|ARG|ARG…` to `record`,
/// then promotes (`failover`), repoints a standby (`follow`) or rebuilds a
/// node from a base backup (`recover`). Servers are handled as the owner of
/// their data directory.
fn hook_script(bindir: &Path, record: &Path) -> String {
    format!(
        r#"#!/bin/sh
set -eu
BIN='{bin}'
kind=$1; shift
line=$kind
for a in "$@"; do line="$line|$a"; done
echo "$line" >>'{record}'
as_owner() {{
    owned=$1; shift
    if [ "$(id -u)" = 0 ]; then runuser -u "$(stat -c %U "$owned")" -- "$@"; else "$@"; fi
}}
export PGPASSWORD=postgres
sql() {{ "$BIN/psql" -X -q -At -h "$1" -p "$2" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$3"; }}
# $1..$12: %d %h %p %D %m %H %r %R %M %P %N %S
case $kind in
failover)
    as_owner "$8" "$BIN/pg_ctl" promote -w -D "$8" ;;
follow)
    slot=$(sql "$2" "$3" "SHOW primary_slot_name")
    sql "$6" "$7" "SELECT pg_create_physical_replication_slot('$slot', true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$slot')" >/dev/null
    sql "$2" "$3" "ALTER SYSTEM SET primary_conninfo = 'host=$6 port=$7 user=replicator password=replicator'"
    sql "$2" "$3" "SELECT pg_reload_conf()" >/dev/null ;;
recover)
    dir=$4; parent=$(dirname "$dir")
    as_owner "$parent" "$BIN/pg_ctl" stop -D "$dir" -m immediate >/dev/null 2>&1 || true
    conf=$(cat "$dir/postgresql.conf"); hba=$(cat "$dir/pg_hba.conf")
    as_owner "$parent" rm -rf "$dir"
    as_owner "$parent" "$BIN/pg_basebackup" -D "$dir" -X stream -c fast -R -C -S "recovered_$1" \
        -d "host=$6 port=$7 user=replicator password=replicator"
    printf '%s\n' "$conf" | as_owner "$parent" tee "$dir/postgresql.conf" >/dev/null
    printf '%s\n' "$hba" | as_owner "$parent" tee "$dir/pg_hba.conf" >/dev/null
    as_owner "$parent" "$BIN/pg_ctl" start -w -D "$dir" -l "$parent/postgresql.log" >/dev/null ;;
esac
"#,
        bin = bindir.display(),
        record = record.display(),
    )
}

/// Recorded calls of `kind`, each split into its arguments.
fn calls(record: &Path, kind: &str) -> Result<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix(kind)?.strip_prefix('|'))
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_follow_and_recovery_run_through_the_hooks_with_pgpool_placeholders() -> Result<()>
{
    let hooks = tempfile::tempdir()?;
    let record = hooks.path().join("calls");
    let script = hooks.path().join("hook.sh");
    let failover = format!(
        "failover_command = 'sh {s} failover {ALL}'\n\
         follow_primary_command = 'sh {s} follow {ALL}'\n\
         recovery_command = 'sh {s} recover {ALL}'",
        s = script.display()
    );
    let bed = FailoverBed::start_with(
        false,
        &Extra {
            failover: &failover,
            ..Extra::default()
        },
    )?;
    // Written once the cluster is there: it runs that installation's programs.
    std::fs::write(&script, hook_script(&bed.cluster.bindir()?, &record))?;
    let nodes = bed.cluster.nodes().to_vec();
    let id_of = |name: &str| nodes.iter().position(|n| n.name == name).unwrap();
    let old = bed.cluster.primary().name.clone();

    bed.cluster.kill9(&old)?;
    wait(Duration::from_secs(30), "a new primary", || {
        Ok(bed.primary()?.is_some_and(|p| p != old))
    })
    .await
    .map_err(|e| e.context(bed.tidepool.log_tail(30)))?;
    let new = bed.primary()?.context("a primary")?;
    let follower = nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != new && *n != old)
        .unwrap();
    wait(
        Duration::from_secs(30),
        "the other standby to stream from the new primary",
        || Ok(bed.streaming_from(&new)?.contains(&follower)),
    )
    .await
    .map_err(|e| e.context(bed.tidepool.log_tail(30)))?;
    assert_eq!(bed.cluster.role(&new)?, tidepool_tests::Role::Primary);

    // The expected arguments: `who` (%d %h %p %D), the new primary
    // (%m %H %r %R), the old primary (%M %P %N %S), then `%`.
    let node = |name: &str| {
        let n = &nodes[id_of(name)];
        vec![
            id_of(name).to_string(),
            n.host.clone(),
            n.port.to_string(),
            n.data_dir.display().to_string(),
        ]
    };
    let expected = |who: &str, old: Option<&str>| {
        let mut v = node(who);
        v.extend(node(&new));
        match old {
            Some(o) => {
                let o = node(o);
                v.extend([o[0].clone(), o[0].clone(), o[1].clone(), o[2].clone()]);
            }
            None => v.extend(["", "", "", ""].map(String::from)),
        }
        v.push("%".into());
        v
    };
    assert_eq!(
        calls(&record, "failover")?,
        vec![expected(&old, Some(&old))],
        "failover_command: the failed node, the node to promote, the old primary"
    );
    assert_eq!(
        calls(&record, "follow")?,
        vec![expected(&follower, Some(&old))],
        "follow_primary_command: the standby, the new primary, the old primary"
    );

    let out = bed.ctl(&["recover", &old])?;
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        bed.tidepool.log_tail(30)
    );
    assert_eq!(
        calls(&record, "recover")?,
        vec![expected(&old, None)],
        "recovery_command: the node, the primary it recovers from"
    );
    assert_eq!(bed.status(&old)?, "up");
    assert_eq!(bed.cluster.role(&old)?, tidepool_tests::Role::Standby);
    assert!(bed.streaming_from(&new)?.contains(&old));
    Ok(())
}
