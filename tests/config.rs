//! `nsmd::config`: rpc.statd's command line, nfs.conf as nfs-utils reads it, and the
//! precedence flag > nfs.conf > default for every setting.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use nsmd::config::nfsconf::{ExpandError, NfsConf, NfsConfError};
use nsmd::config::{
    ConfigError, DebugFacilities, SmNotifyOverrides, StatdArgs, StatdConfig, resolve_sm_notify,
    resolve_with_env,
};

fn args(list: &[&str]) -> StatdArgs {
    let mut v = vec!["nsmd"];
    v.extend_from_slice(list);
    StatdArgs::try_parse_from(v).unwrap_or_else(|e| panic!("{list:?}: {e}"))
}

fn parse_err(list: &[&str]) -> clap::Error {
    let mut v = vec!["nsmd"];
    v.extend_from_slice(list);
    StatdArgs::try_parse_from(v).unwrap_err()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn conf(text: &str) -> NfsConf {
    NfsConf::parse_str(text, Path::new("/etc/nfs.conf"), &no_env).unwrap()
}

fn resolved(a: &[&str], text: &str) -> StatdConfig {
    resolve_with_env(&args(a), &conf(text), &no_env).unwrap()
}

fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(path, text).unwrap();
}

// ---------------------------------------------------------------------------------------
// Command line

#[test]
fn cli_is_well_formed() {
    StatdArgs::command().debug_assert();
}

/// Command-line words and a check of what they parse to.
type Case = (&'static [&'static str], fn(&StatdArgs) -> bool);

#[test]
fn every_option_letter_and_long_name() {
    let cases: &[Case] = &[
        (&["-F"], |a| a.foreground),
        (&["--foreground"], |a| a.foreground),
        (&["-d"], |a| a.no_syslog),
        (&["--no-syslog"], |a| a.no_syslog),
        (&["-p", "1234"], |a| a.port == Some(1234)),
        (&["--port", "1234"], |a| a.port == Some(1234)),
        (&["--port=1234"], |a| a.port == Some(1234)),
        (&["-o", "1235"], |a| a.outgoing_port == Some(1235)),
        (&["--outgoing-port", "1235"], |a| {
            a.outgoing_port == Some(1235)
        }),
        (&["-n", "svc1"], |a| a.name.as_deref() == Some("svc1")),
        (&["--name", "svc1"], |a| a.name.as_deref() == Some("svc1")),
        (&["-P", "/srv/nfs"], |a| {
            a.state_dir.as_deref() == Some(Path::new("/srv/nfs"))
        }),
        (&["--state-directory-path", "/srv/nfs"], |a| {
            a.state_dir.as_deref() == Some(Path::new("/srv/nfs"))
        }),
        (&["-N"], |a| a.notify_mode),
        (&["--notify-mode"], |a| a.notify_mode),
        (&["-H", "/bin/callout"], |a| {
            a.ha_callout.as_deref() == Some(Path::new("/bin/callout"))
        }),
        (&["--ha-callout", "/bin/callout"], |a| {
            a.ha_callout.as_deref() == Some(Path::new("/bin/callout"))
        }),
        (&["-L"], |a| a.no_notify),
        (&["--no-notify"], |a| a.no_notify),
        (&["-T", "4000"], |a| a.nlm_port == Some(4000)),
        (&["--nlm-port", "4000"], |a| a.nlm_port == Some(4000)),
        (&["-U", "4001"], |a| a.nlm_udp_port == Some(4001)),
        (&["--nlm-udp-port", "4001"], |a| {
            a.nlm_udp_port == Some(4001)
        }),
        (&["--config", "/tmp/x.conf"], |a| {
            a.config.as_deref() == Some(Path::new("/tmp/x.conf"))
        }),
        (&["--proc-root", "/tmp/proc"], |a| {
            a.proc_root.as_deref() == Some(Path::new("/tmp/proc"))
        }),
        (&["--rpcbind-socket", "/tmp/rpcbind.sock"], |a| {
            a.rpcbind_socket.as_deref() == Some(Path::new("/tmp/rpcbind.sock"))
        }),
        (&["--tcp-idle-timeout", "5"], |a| {
            a.tcp_idle_timeout == Some(std::time::Duration::from_secs(5))
        }),
    ];
    for (list, check) in cases {
        let a = args(list);
        assert!(check(&a), "{list:?} gave {a:?}");
    }
    assert_eq!(args(&[]), StatdArgs::default());
}

#[test]
fn combined_short_forms() {
    let a = args(&[
        "-Fd",
        "-p1234",
        "-P/dir",
        "-o1235",
        "-nsvc",
        "-H/bin/co",
        "-T4000",
    ]);
    assert!(a.foreground && a.no_syslog);
    assert_eq!(a.port, Some(1234));
    assert_eq!(a.outgoing_port, Some(1235));
    assert_eq!(a.state_dir.as_deref(), Some(Path::new("/dir")));
    assert_eq!(a.name.as_deref(), Some("svc"));
    assert_eq!(a.ha_callout.as_deref(), Some(Path::new("/bin/co")));
    assert_eq!(a.nlm_port, Some(4000));
    // Flags, then an option with its value attached, in one word (getopt allows it).
    let a = args(&["-FLdp1234", "-U4001"]);
    assert!(a.foreground && a.no_notify && a.no_syslog);
    assert_eq!(a.port, Some(1234));
    assert_eq!(a.nlm_udp_port, Some(4001));
    assert_eq!(args(&["-p", "65535"]).port, Some(65535));
    assert_eq!(args(&["-p", "1"]).port, Some(1));
}

#[test]
fn help_and_version() {
    for h in ["-h", "-?", "--help"] {
        assert_eq!(parse_err(&[h]).kind(), ErrorKind::DisplayHelp, "{h}");
    }
    for v in ["-v", "-V", "--version"] {
        let e = parse_err(&[v]);
        assert_eq!(e.kind(), ErrorKind::DisplayVersion, "{v}");
        assert_eq!(
            e.to_string(),
            format!("nsmd {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
    let help = StatdArgs::command().render_help().to_string();
    for long in [
        "--foreground",
        "--no-syslog",
        "--help",
        "--version",
        "--port",
        "--outgoing-port",
        "--name",
        "--state-directory-path",
        "--notify-mode",
        "--ha-callout",
        "--no-notify",
        "--nlm-port",
        "--nlm-udp-port",
        "--config",
        "--proc-root",
        "--rpcbind-socket",
        "--tcp-idle-timeout",
        "nsmd-only options:",
        "RPC_STATD_NO_NOTIFY",
    ] {
        assert!(help.contains(long), "{long} missing from\n{help}");
    }
}

#[test]
fn bad_ports_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["-p", "0"],
            "invalid value '0' for '--port <PORT>': port out of range: expected 1..=65535",
        ),
        (
            &["-p", "65536"],
            "invalid value '65536' for '--port <PORT>': port out of range: expected 1..=65535",
        ),
        (
            &["-pabc"],
            "invalid value 'abc' for '--port <PORT>': not a port number: expected an integer \
             in 1..=65535",
        ),
        (
            &["-o", "12x"],
            "invalid value '12x' for '--outgoing-port <PORT>': not a port number",
        ),
        (
            &["--nlm-port=-1"],
            "invalid value '-1' for '--nlm-port <PORT>': not a port number",
        ),
        (
            &["-U", "99999"],
            "invalid value '99999' for '--nlm-udp-port <PORT>': port out of range",
        ),
        (
            &["--tcp-idle-timeout", "0"],
            "invalid value '0' for '--tcp-idle-timeout <SECONDS>': expected a whole number of \
             seconds in 1..=86400",
        ),
    ];
    for (list, want) in cases {
        let e = parse_err(list);
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{list:?}");
        let msg = e.to_string();
        assert!(msg.contains(want), "{list:?}: {msg}");
    }
    let e = parse_err(&["-p"]);
    assert!(
        e.to_string()
            .contains("a value is required for '--port <PORT>' but none was supplied"),
        "{e}"
    );
}

#[test]
fn unknown_option_is_a_clear_error() {
    let e = parse_err(&["-x"]);
    assert_eq!(e.kind(), ErrorKind::UnknownArgument);
    assert!(
        e.to_string().contains("unexpected argument '-x' found"),
        "{e}"
    );
    let e = parse_err(&["--bogus"]);
    assert!(
        e.to_string()
            .contains("unexpected argument '--bogus' found"),
        "{e}"
    );
}

#[test]
fn notify_mode_is_refused_with_directions() {
    let e = resolve_with_env(&args(&["-N"]), &NfsConf::empty(), &no_env).unwrap_err();
    assert!(matches!(e, ConfigError::NotifyMode));
    let msg = e.to_string();
    assert!(
        msg.starts_with("-N (--notify-mode) is not supported"),
        "{msg}"
    );
    assert!(msg.contains("nsm-notify"), "{msg}");
}

#[test]
fn same_listening_and_outgoing_port_is_refused() {
    let e = resolve_with_env(
        &args(&["-p", "700", "-o", "700"]),
        &NfsConf::empty(),
        &no_env,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "listening and outgoing ports cannot be the same: port 700 (listening port from \
         -p/--port, outgoing port from -o/--outgoing-port)"
    );
    // Also when one comes from nfs.conf (rpc.statd checks after merging).
    let e = resolve_with_env(
        &args(&["-o", "700"]),
        &conf("[statd]\nport = 700\n"),
        &no_env,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("listening port from /etc/nfs.conf:2"),
        "{e}"
    );
    // A flag moving one of them away resolves the clash.
    let c = resolved(&["-p", "701"], "[statd]\nport = 700\noutgoing-port = 700\n");
    assert_eq!((c.port, c.outgoing_port), (Some(701), Some(700)));
}

// ---------------------------------------------------------------------------------------
// Precedence: flag > nfs.conf > default, key by key

const FULL: &str = "\
[statd]
port = 662
outgoing-port = 2020
name = from-file
state-directory-path = /file/state
ha-callout = /file/callout
no-notify = yes
debug = call,parse
[lockd]
port = 32768
udp-port = 32769
";

#[test]
fn defaults_when_nothing_is_set() {
    let c = resolved(&[], "");
    assert!(!c.foreground && !c.no_syslog && !c.no_notify);
    assert_eq!(c.debug, DebugFacilities::default());
    assert_eq!(c.port, None);
    assert_eq!(c.outgoing_port, None);
    assert_eq!(c.name, None);
    assert_eq!(c.state_dir, Path::new("/var/lib/nfs"));
    assert_eq!(c.ha_callout, None);
    assert_eq!((c.nlm_tcp_port, c.nlm_udp_port), (None, None));
    assert_eq!(c.config_file, Path::new("/etc/nfs.conf"));
    assert_eq!(c.proc_root.0, Path::new("/proc"));
    assert_eq!(c.rpcbind_socket, Path::new("/run/rpcbind.sock"));
    assert_eq!(c.tcp_idle_timeout, std::time::Duration::from_secs(120));
    assert!(c.warnings.is_empty());
}

#[test]
fn file_beats_defaults() {
    let c = resolved(&[], FULL);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.port, Some(662));
    assert_eq!(c.outgoing_port, Some(2020));
    assert_eq!(c.name.as_deref(), Some("from-file"));
    assert_eq!(c.state_dir, Path::new("/file/state"));
    assert_eq!(c.ha_callout.as_deref(), Some(Path::new("/file/callout")));
    assert!(c.no_notify);
    assert_eq!(
        c.debug,
        DebugFacilities {
            call: true,
            parse: true,
            ..Default::default()
        }
    );
    assert_eq!((c.nlm_tcp_port, c.nlm_udp_port), (Some(32768), Some(32769)));
}

#[test]
fn flags_beat_the_file() {
    let c = resolved(
        &[
            "-p4662",
            "-o4020",
            "-nflag",
            "-P/flag/state",
            "-H/flag/callout",
            "-T5000",
            "-U5001",
            "-d",
        ],
        FULL,
    );
    assert_eq!(c.port, Some(4662));
    assert_eq!(c.outgoing_port, Some(4020));
    assert_eq!(c.name.as_deref(), Some("flag"));
    assert_eq!(c.state_dir, Path::new("/flag/state"));
    assert_eq!(c.ha_callout.as_deref(), Some(Path::new("/flag/callout")));
    assert_eq!((c.nlm_tcp_port, c.nlm_udp_port), (Some(5000), Some(5001)));
    assert!(c.no_syslog);
    assert_eq!(c.debug, DebugFacilities::ALL);
    let c = resolved(
        &[
            "-F",
            "-L",
            "--config",
            "/x",
            "--proc-root",
            "/p",
            "--rpcbind-socket",
            "/r",
        ],
        "",
    );
    assert!(c.foreground && c.no_notify);
    assert_eq!(c.config_file, Path::new("/x"));
    assert_eq!(c.proc_root.0, Path::new("/p"));
    assert_eq!(c.rpcbind_socket, Path::new("/r"));
}

#[test]
fn no_notify_from_flag_environment_or_file() {
    let with_env =
        |v: &'static str| move |n: &str| (n == "RPC_STATD_NO_NOTIFY").then(|| v.to_owned());
    let empty = NfsConf::empty();
    let r = |a: &[&str], c: &NfsConf, e: &dyn Fn(&str) -> Option<String>| {
        resolve_with_env(&args(a), c, e).unwrap()
    };
    assert!(!r(&[], &empty, &no_env).no_notify);
    assert!(r(&["-L"], &empty, &no_env).no_notify);
    assert!(r(&[], &empty, &with_env("1")).no_notify);
    assert!(r(&[], &empty, &with_env("7")).no_notify);
    assert!(!r(&[], &empty, &with_env("0")).no_notify);
    assert!(!r(&[], &empty, &with_env("-1")).no_notify);
    let c = r(&[], &empty, &with_env("yes"));
    assert!(!c.no_notify);
    assert_eq!(
        c.warnings,
        [
            "RPC_STATD_NO_NOTIFY=\"yes\" is not an integer: read as 0 (as rpc.statd reads it); a \
          positive integer acts like -L"
        ]
    );
    // As in rpc.statd, the three only ever turn it on: the environment beats `no-notify = n`.
    let off = conf("[statd]\nno-notify = n\n");
    assert!(r(&[], &off, &with_env("1")).no_notify);
    assert!(r(&["-L"], &off, &no_env).no_notify);
    assert!(!r(&[], &off, &no_env).no_notify);
    assert!(r(&[], &conf("[statd]\nno-notify = On\n"), &no_env).no_notify);
}

#[test]
fn nlm_udp_port_follows_the_tcp_port() {
    let ports = |a: &[&str], t: &str| {
        let c = resolved(a, t);
        (c.nlm_tcp_port, c.nlm_udp_port)
    };
    assert_eq!(ports(&["-T4000"], ""), (Some(4000), Some(4000)));
    assert_eq!(ports(&["-U4001"], ""), (None, Some(4001)));
    assert_eq!(
        ports(&[], "[lockd]\nport = 4000\n"),
        (Some(4000), Some(4000))
    );
    assert_eq!(
        ports(&[], "[lockd]\nport = 4000\nudp-port = 4001\n"),
        (Some(4000), Some(4001))
    );
    assert_eq!(ports(&[], "[lockd]\nudp-port = 4001\n"), (None, Some(4001)));
    // -T over [lockd] port: UDP follows -T (rpc.statd would keep UDP at [lockd] port).
    assert_eq!(
        ports(&["-T5000"], "[lockd]\nport = 4000\n"),
        (Some(5000), Some(5000))
    );
    // An explicit udp-port in the file beats the TCP port from a flag.
    assert_eq!(
        ports(&["-T5000"], "[lockd]\nudp-port = 4001\n"),
        (Some(5000), Some(4001))
    );
    assert_eq!(
        ports(
            &["-T5000", "-U5001"],
            "[lockd]\nport = 4000\nudp-port = 4001\n"
        ),
        (Some(5000), Some(5001))
    );
    // port = 0 (the commented sample value) means unset, as in nfs-utils.
    assert_eq!(
        ports(&[], "[lockd]\nport = 0\nudp-port = 0\n"),
        (None, None)
    );
}

#[test]
fn bad_values_in_the_file_warn_and_fall_back() {
    let c = resolved(
        &[],
        "[statd]\nno-notify = maybe\nport = abc\noutgoing-port = 70000\ndebug = call, verbose\n\
         [lockd]\nport = 4000x\n",
    );
    assert!(!c.no_notify);
    assert_eq!(c.port, None);
    assert_eq!(c.outgoing_port, None);
    assert_eq!(c.nlm_tcp_port, Some(4000));
    assert!(c.debug.call && !c.debug.general);
    assert_eq!(
        c.warnings,
        [
            "/etc/nfs.conf:5: [statd] debug: \"verbose\" is not a debug facility (general, call, \
             auth, parse, all, 0, 1): ignored",
            "/etc/nfs.conf:3: [statd] port = \"abc\" is not a number: read as 0 (as nfs-utils \
             reads it)",
            "/etc/nfs.conf:4: [statd] outgoing-port = 70000 is not a port (1..=65535): ignored",
            "/etc/nfs.conf:2: [statd] no-notify = \"maybe\" is not a boolean (1/t/true/y/yes/on \
             or 0/f/false/n/no/off, any case): using the default (no)",
            "/etc/nfs.conf:7: [lockd] port = \"4000x\" is not a number: read as 4000 (as \
             nfs-utils reads it)",
        ]
    );
}

#[test]
fn every_boolean_word() {
    for (word, want) in [
        ("1", true),
        ("t", true),
        ("True", true),
        ("Y", true),
        ("yes", true),
        ("ON", true),
        ("0", false),
        ("F", false),
        ("false", false),
        ("n", false),
        ("No", false),
        ("off", false),
    ] {
        let c = resolved(&[], &format!("[statd]\nno-notify = {word}\n"));
        assert_eq!(c.no_notify, want, "{word}");
        assert!(c.warnings.is_empty(), "{word}: {:?}", c.warnings);
    }
}

#[test]
fn unknown_keys_are_warnings() {
    let c = resolved(
        &[],
        "[statd]\nport = 662\nstate-dir = /x\n[lockd]\ntcp-port = 1\n[nfsd]\nthreads = 8\n",
    );
    assert_eq!(c.port, Some(662));
    assert_eq!(
        c.warnings,
        [
            "/etc/nfs.conf:3: [statd] state-dir: unknown key, ignored (rpc.statd and nsmd read \
             only port, outgoing-port, name, state-directory-path, ha-callout, no-notify, debug)",
            "/etc/nfs.conf:5: [lockd] tcp-port: unknown key, ignored (rpc.statd and nsmd read \
             only port, udp-port)",
        ]
    );
}

#[test]
fn unresolved_dollar_value_warns_and_is_unset() {
    let c = resolved(&[], "[statd]\nname = early\nname = $NSMD_NO_SUCH_VAR\n");
    assert_eq!(c.name, None);
    assert_eq!(
        c.warnings,
        [
            "/etc/nfs.conf:3: [statd] name = $NSMD_NO_SUCH_VAR: $NSMD_NO_SUCH_VAR: \
             \"NSMD_NO_SUCH_VAR\" is neither a (non-empty) environment variable nor a key of \
             [environment]; treated as unset (as nfs-utils does)"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// sm-notify

#[test]
fn sm_notify_precedence() {
    let text = "\
[statd]
state-directory-path = /file/state
[sm-notify]
retry-time = 2
outgoing-port = 2021
outgoing-addr = file-name
lift-grace = n
update-state = no
force = yes
debug = general
";
    let c = resolve_sm_notify(&SmNotifyOverrides::default(), &NfsConf::empty());
    assert_eq!(c.retry_time, Some(std::time::Duration::from_secs(15 * 60)));
    assert!(c.lift_grace && c.update_state && !c.force && !c.foreground);
    assert_eq!(c.state_dir, Path::new("/var/lib/nfs"));
    assert_eq!((c.outgoing_port, c.outgoing_addr), (None, None));
    assert!(c.warnings.is_empty());

    let c = resolve_sm_notify(&SmNotifyOverrides::default(), &conf(text));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.retry_time, Some(std::time::Duration::from_secs(120)));
    assert_eq!(c.outgoing_port, Some(2021));
    assert_eq!(c.outgoing_addr.as_deref(), Some("file-name"));
    assert!(!c.lift_grace && !c.update_state && c.force);
    assert!(c.debug.general && !c.debug.call);
    assert_eq!(c.state_dir, Path::new("/file/state"));

    let flags = SmNotifyOverrides {
        debug: true,
        retry_minutes: Some(0),
        outgoing_port: Some(3000),
        outgoing_addr: Some("flag-name".into()),
        state_dir: Some("/flag/state".into()),
        proc_root: Some("/tmp/p".into()),
        ..SmNotifyOverrides::default()
    };
    let c = resolve_sm_notify(&flags, &conf(text));
    assert_eq!(c.retry_time, None, "-m 0 retries forever");
    assert_eq!(c.outgoing_port, Some(3000));
    assert_eq!(c.outgoing_addr.as_deref(), Some("flag-name"));
    assert_eq!(c.state_dir, Path::new("/flag/state"));
    assert_eq!(c.debug, DebugFacilities::ALL);
    assert!(c.foreground);
    assert_eq!(
        c.proc_root.nlm_end_grace(),
        Path::new("/tmp/p/fs/lockd/nlm_end_grace")
    );

    let c = resolve_sm_notify(
        &SmNotifyOverrides {
            no_update_state: true,
            force: true,
            ..SmNotifyOverrides::default()
        },
        &conf(
            "[sm-notify]\nupdate-state = y\nforce = n\nretry-time = -3\nlift-grace = sure\nretries = 9\n",
        ),
    );
    assert!(!c.update_state && c.force && c.lift_grace);
    assert_eq!(c.retry_time, Some(std::time::Duration::from_secs(15 * 60)));
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("retry-time = -3 is not a number of minutes"));
    assert!(c.warnings[1].contains("[sm-notify] lift-grace = \"sure\" is not a boolean"));
    assert!(c.warnings[1].ends_with("using the default (yes)"));
    assert!(c.warnings[2].contains("[sm-notify] retries: unknown key"));
}

#[test]
fn statd_hands_its_settings_to_the_notifier() {
    let c = resolved(&["-F", "-o", "999", "-n", "svc", "-P", "/srv/state"], "");
    let n = resolve_sm_notify(
        &c.sm_notify_overrides(),
        &conf("[sm-notify]\noutgoing-port = 1\noutgoing-addr = other\n"),
    );
    assert!(n.foreground);
    assert_eq!(n.outgoing_port, Some(999));
    assert_eq!(n.outgoing_addr.as_deref(), Some("svc"));
    assert_eq!(n.state_dir, Path::new("/srv/state"));
}

// ---------------------------------------------------------------------------------------
// nfs.conf parsing

#[test]
fn quotes_comments_and_case() {
    let c = conf(
        "# comment\n; comment\n   # indented comment\n\n[ STATD ]  # after the header\n\
         Name = \"  spaced # kept ; kept  \" ignored\nHA-Callout = '/a b'\n\
         port = 662 # trailing comment\noutgoing-port=2020;trailing\nstate-directory-path = \
         /x\t \n",
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert_eq!(c.get_str("statd", "name"), Some("  spaced # kept ; kept  "));
    assert_eq!(c.get_str("Statd", "ha-callout"), Some("/a b"));
    assert_eq!(c.get_str("statd", "PORT"), Some("662"));
    assert_eq!(c.get_str("statd", "outgoing-port"), Some("2020"));
    assert_eq!(c.get_str("statd", "state-directory-path"), Some("/x"));
    assert_eq!(c.get("statd", "name").unwrap().section, "statd");
    let r = resolved(&[], "[STATD]\nPORT = 662\n[LockD]\nUDP-Port = 9\n");
    assert_eq!((r.port, r.nlm_udp_port), (Some(662), Some(9)));
    assert!(r.warnings.is_empty());
}

#[test]
fn later_values_override_earlier_and_empty_values_do_not() {
    let c = conf("[statd]\nport = 1\n[lockd]\n[statd]\nport = 2\nport =\nport = \"\"\n");
    assert_eq!(c.get_str("statd", "port"), Some("2"));
    assert_eq!(c.get("statd", "port").unwrap().origin.line, 5);
}

#[test]
fn dollar_values() {
    let env = |n: &str| (n == "NSMD_TEST_PORT").then(|| "4662".to_owned());
    let text = "[environment]\nname = env-section-name\n[statd]\nport = $NSMD_TEST_PORT\n\
                name = \"$name\"\n";
    let c = NfsConf::parse_str(text, Path::new("/etc/nfs.conf"), &env).unwrap();
    let r = resolve_with_env(&StatdArgs::default(), &c, &no_env).unwrap();
    assert_eq!(r.port, Some(4662));
    assert_eq!(r.name.as_deref(), Some("env-section-name"));
    let loop_ = conf("[environment]\na = $b\nb = $a\n[statd]\nname = $a\n");
    assert_eq!(
        loop_.get("statd", "name").unwrap().value,
        Err(ExpandError::Loop {
            chain: vec!["a".into(), "b".into(), "a".into()]
        })
    );
}

#[test]
fn includes() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("nfs.conf");
    write(
        &main,
        "[statd]\nport = 1\ninclude = sub/inc.conf\nname = after-include\n\
         include = -missing-optional.conf\ninclude = missing.conf\n\
         [lockd]\ninclude = /ABS\n",
    );
    // Relative to the including file's directory; starts in the includer's section.
    write(
        &dir.path().join("sub/inc.conf"),
        "port = 2\nha-callout = /inc\ninclude = deeper.conf\n[lockd]\nport = 3\n",
    );
    write(&dir.path().join("sub/deeper.conf"), "outgoing-port = 4\n");
    let abs = dir.path().join("abs.conf");
    write(&abs, "udp-port = 5\n");
    let text = fs::read_to_string(&main)
        .unwrap()
        .replace("/ABS", abs.to_str().unwrap());
    write(&main, &text);

    let c = NfsConf::load_with_env(&main, &no_env).unwrap();
    assert_eq!(c.get_str("statd", "port"), Some("2"));
    assert_eq!(c.get_str("statd", "ha-callout"), Some("/inc"));
    assert_eq!(c.get_str("statd", "outgoing-port"), Some("4"));
    assert_eq!(c.get_str("lockd", "port"), Some("3"));
    // The included file's [lockd] header does not change the includer's section.
    assert_eq!(c.get_str("statd", "name"), Some("after-include"));
    assert_eq!(c.get("lockd", "name"), None);
    assert_eq!(c.get_str("lockd", "udp-port"), Some("5"));
    let deeper = c.get("statd", "outgoing-port").unwrap();
    assert_eq!(deeper.origin.file, dir.path().join("sub/deeper.conf"));
    assert_eq!(deeper.origin.line, 1);
    // Only the non-optional missing include is reported, with file and line.
    let w: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [format!(
            "{}:6: included file {} does not exist: ignored (write include = -FILE for an \
             optional file)",
            main.display(),
            dir.path().join("missing.conf").display()
        )]
    );
    assert_eq!(
        c.files(),
        [
            main.clone(),
            dir.path().join("sub/inc.conf"),
            dir.path().join("sub/deeper.conf"),
            abs
        ]
    );
}

#[test]
fn include_outside_a_section_is_ignored_as_in_nfs_utils() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("nfs.conf");
    write(&main, "include = other.conf\n[statd]\n");
    write(&dir.path().join("other.conf"), "[statd]\nport = 9\n");
    let c = NfsConf::load_with_env(&main, &no_env).unwrap();
    assert_eq!(c.get("statd", "port"), None);
    assert_eq!(c.warnings().len(), 1);
    assert!(c.warnings()[0].to_string().ends_with(
        "nfs.conf:1: assignment outside any section (write a [section] header \
                        above it): ignored"
    ));
}

#[test]
fn include_loops_are_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.conf");
    let b = dir.path().join("b.conf");
    write(&a, "[statd]\n# b\ninclude = b.conf\n");
    write(&b, "[lockd]\n\ninclude = a.conf\n");
    let e = NfsConf::load_with_env(&a, &no_env).unwrap_err();
    assert!(matches!(e, NfsConfError::IncludeLoop { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:3: include loop: {} -> {} -> {}",
            b.display(),
            a.display(),
            b.display(),
            a.display()
        )
    );
    // A file that includes itself.
    write(&a, "[statd]\ninclude = ./a.conf\n");
    let e = NfsConf::load_with_env(&a, &no_env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2: include loop", a.display())),
        "{e}"
    );
    // Including the same file twice, not nested, is no loop.
    write(&a, "[statd]\ninclude = b.conf\ninclude = b.conf\n");
    write(&b, "port = 1\n");
    assert!(NfsConf::load_with_env(&a, &no_env).is_ok());
    // Through load(): the error is a ConfigError naming the file.
    write(&b, "include = a.conf\n");
    let e = nsmd::config::load(&args(&["--config", a.to_str().unwrap()])).unwrap_err();
    assert!(e.to_string().starts_with("nfs.conf: "), "{e}");
    assert!(e.to_string().contains("include loop"), "{e}");
}

#[test]
fn drop_in_directory_order_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("nfs.conf");
    write(&main, "[statd]\nport = 1\nname = main\n");
    let d = dir.path().join("nfs.conf.d");
    write(&d.join("10-b.conf"), "[statd]\nport = 10\n");
    write(&d.join("9-a.conf"), "[statd]\nport = 9\nname = nine\n");
    write(&d.join("2-c.conf"), "[lockd]\nport = 2\n");
    // Skipped: hidden, wrong suffix, only the suffix, a directory.
    write(&d.join(".hidden.conf"), "[statd]\nport = 666\n");
    write(&d.join("z.conf.bak"), "[statd]\nport = 667\n");
    write(&d.join("z.conf~"), "[statd]\nport = 668\n");
    write(&d.join(".conf"), "[statd]\nport = 669\n");
    fs::create_dir_all(d.join("dir.conf")).unwrap();
    // Each drop-in starts outside any section.
    write(&d.join("3-nosection.conf"), "port = 670\n");

    let c = NfsConf::load_with_env(&main, &no_env).unwrap();
    let names: Vec<_> = c
        .files()
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        names,
        [
            PathBuf::from("nfs.conf"),
            "nfs.conf.d/2-c.conf".into(),
            "nfs.conf.d/3-nosection.conf".into(),
            "nfs.conf.d/9-a.conf".into(),
            "nfs.conf.d/10-b.conf".into(),
        ]
    );
    assert_eq!(c.get_str("statd", "port"), Some("10"));
    assert_eq!(c.get_str("statd", "name"), Some("nine"));
    assert_eq!(c.get_str("lockd", "port"), Some("2"));
    assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    assert_eq!(
        c.warnings()[0].file,
        d.join("3-nosection.conf"),
        "{:?}",
        c.warnings()
    );

    // Without the main file, the drop-ins are still read.
    fs::remove_file(&main).unwrap();
    let c = NfsConf::load_with_env(&main, &no_env).unwrap();
    assert_eq!(c.get_str("statd", "port"), Some("10"));
}

#[test]
fn missing_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.conf");
    let c = NfsConf::load_with_env(&missing, &no_env).unwrap();
    assert_eq!(c, NfsConf::empty());
    // An explicit --config that does not exist is reported, not fatal.
    let r = nsmd::config::load(&args(&["--config", missing.to_str().unwrap()])).unwrap();
    assert_eq!(
        r.warnings,
        [format!(
            "{}: does not exist: no settings from it",
            missing.display()
        )]
    );
    // A directory where the file should be is fatal, and named.
    let e = NfsConf::load_with_env(dir.path(), &no_env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read {}: ", dir.path().display())),
        "{e}"
    );
    let main = dir.path().join("nfs.conf");
    write(&main, "[statd]\ninclude = sub\n");
    fs::create_dir_all(dir.path().join("sub")).unwrap();
    let e = NfsConf::load_with_env(&main, &no_env).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{}:2: cannot read included file {}: ",
            main.display(),
            dir.path().join("sub").display()
        )),
        "{e}"
    );
}

#[test]
fn parse_problems_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("nfs.conf");
    write(
        &main,
        "[statd]\nport 662\n[lockd\nport = 1\n[statd]\nname = \"open\nport = 7",
    );
    let c = NfsConf::load_with_env(&main, &no_env).unwrap();
    let w: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
    let m = main.display();
    assert_eq!(
        w,
        [
            format!("{m}:2: neither a comment, a section header nor an assignment: ignored"),
            format!(
                "{m}:3: section header without ']': the lines up to the next section header \
                 are ignored"
            ),
            format!(
                "{m}:4: assignment outside any section (write a [section] header above it): \
                 ignored"
            ),
            format!("{m}:6: no closing \" in the value: ignored"),
            format!(
                "{m}:7: the last line does not end with a newline: ignored (as nfs-utils \
                 does); add a newline"
            ),
        ]
    );
    assert_eq!(c.get("statd", "port"), None);
    assert_eq!(c.get("lockd", "port"), None);
    // The binary gets them among the config warnings.
    let r = resolve_with_env(&StatdArgs::default(), &c, &no_env).unwrap();
    assert_eq!(r.warnings, w);
}

#[test]
fn continuation_lines() {
    let c = conf("[statd]\nname = a\\\nb\nport = 1\n");
    assert_eq!(c.get_str("statd", "name"), Some("a  b"));
    assert_eq!(c.get("statd", "port").unwrap().origin.line, 4);
}

// ---------------------------------------------------------------------------------------
// Debian's shipped nfs.conf

#[test]
fn debian_nfs_conf_parses_cleanly() {
    let mut seen = 0;
    for path in ["/usr/share/nfs-common/conffiles/nfs.conf", "/etc/nfs.conf"] {
        let path = Path::new(path);
        if !path.exists() {
            eprintln!("{} not installed: skipped", path.display());
            continue;
        }
        seen += 1;
        let c = NfsConf::load(path).unwrap();
        assert!(
            c.warnings().is_empty(),
            "{}: {:?}",
            path.display(),
            c.warnings()
        );
        assert!(c.files().first().is_some_and(|f| f == path));
        // What Debian 12's file sets (everything else is commented out).
        assert_eq!(
            c.get_str("general", "pipefs-directory"),
            Some("/run/rpc_pipefs")
        );
        assert_eq!(c.get_str("mountd", "manage-gids"), Some("y"));
        let r =
            resolve_with_env(&args(&["--config", path.to_str().unwrap()]), &c, &no_env).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.state_dir, Path::new("/var/lib/nfs"));
        assert_eq!((r.port, r.nlm_tcp_port), (None, None));
        let n = resolve_sm_notify(&SmNotifyOverrides::default(), &c);
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    }
    if seen == 0 {
        eprintln!("no Debian nfs.conf on this machine: nothing checked");
    }
}

// ---------------------------------------------------------------------------------------
// Differential: the same files through nfs-utils' own parser (`nfsconf --get`, Debian's
// nfs-common), key by key.

const NASTY: &str = "# comment
; comment
top = outside any section
[ Statd ]  trailing junk
Port = 662 # comment
name = \"  q # ; \" rest
ha-callout = 'single;quoted'
outgoing-port = 1;2
state-directory-path = a\\
 b
debug =
no-notify = \"\"
\t  debug\t=\tgeneral , call\t
[statd \"Sub\"]
sub-only = 5
[lockd
port = 1
[lockd]
udp-port =\t 7\t
port 9
 = 3
[environment]
VAR1 = env1
VAR2 = $VAR1
HOME = from-section
[sm-notify]
outgoing-addr = $VAR2
retry-time = $NSMD_T
lift-grace = $MISSING
force = \"$VAR1\"
update-state = $HOME
include = inc.conf
include = -nonexistent.conf
[mixed \"A\"]
k = 1
[mixed]
k = 3
j = 0
[mixed \"B\"]
j = 2
[x \"unterminated]
y = 1
[CaSe]
KeY = v1
key = v2
[last]
line = no newline";

#[test]
fn agrees_with_nfs_utils_nfsconf() {
    let nfsconf = Path::new("/usr/sbin/nfsconf");
    if !nfsconf.exists() {
        eprintln!("{} not installed: skipped", nfsconf.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("nfs.conf");
    write(&main, NASTY);
    write(
        &dir.path().join("inc.conf"),
        "debug = auth\n[nfsd]\nthreads = 8\ninclude = sub/deeper.conf\n",
    );
    write(&dir.path().join("sub/deeper.conf"), "grace-time = 10\n");
    let d = dir.path().join("nfs.conf.d");
    write(&d.join("10-b.conf"), "[nfsd]\nthreads = 10\n");
    write(&d.join("9-a.conf"), "[nfsd]\nthreads = 9\nlease-time = 9\n");
    write(&d.join(".hidden.conf"), "[nfsd]\nlease-time = 666\n");
    write(&d.join("x.conf.bak"), "[nfsd]\nlease-time = 667\n");

    let env_vars = [("NSMD_T", "42"), ("HOME", "/root-from-env")];
    let env = |n: &str| {
        env_vars
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| (*v).to_owned())
    };
    let ours = NfsConf::load_with_env(&main, &env).unwrap();

    let queries: &[(Option<&str>, &str, &str)] = &[
        (None, "statd", "top"),
        (None, "statd", "port"),
        (None, "STATD", "PORT"),
        (None, "statd", "name"),
        (None, "statd", "ha-callout"),
        (None, "statd", "outgoing-port"),
        (None, "statd", "state-directory-path"),
        (None, "statd", "debug"),
        (None, "statd", "no-notify"),
        (None, "statd", "sub-only"),
        (Some("Sub"), "statd", "sub-only"),
        (Some("sub"), "statd", "sub-only"),
        (None, "lockd", "port"),
        (None, "lockd", "udp-port"),
        (None, "lockd", "port 9"),
        (None, "environment", "VAR2"),
        (None, "sm-notify", "outgoing-addr"),
        (None, "sm-notify", "retry-time"),
        (None, "sm-notify", "lift-grace"),
        (None, "sm-notify", "force"),
        (None, "sm-notify", "update-state"),
        (None, "sm-notify", "debug"),
        (None, "nfsd", "threads"),
        (None, "nfsd", "grace-time"),
        (None, "nfsd", "lease-time"),
        (None, "sm-notify", "grace-time"),
        (Some("A"), "mixed", "k"),
        (None, "mixed", "k"),
        (None, "mixed", "j"),
        (Some("B"), "mixed", "j"),
        (None, "x", "y"),
        (None, "case", "key"),
        (None, "last", "line"),
    ];
    let mut mismatches = Vec::new();
    for &(arg, section, tag) in queries {
        let mut cmd = std::process::Command::new(nfsconf);
        cmd.env_clear()
            .envs(env_vars)
            .arg("--file")
            .arg(&main)
            .arg("--get");
        if let Some(a) = arg {
            cmd.args(["--arg", a]);
        }
        let out = cmd.args([section, tag]).output().unwrap();
        let theirs = match out.status.code() {
            Some(0) => Some(
                String::from_utf8(out.stdout)
                    .unwrap()
                    .strip_suffix('\n')
                    .unwrap()
                    .to_owned(),
            ),
            Some(1) => None,
            other => panic!("nfsconf {section} {tag}: exit {other:?}"),
        };
        let ours = ours
            .get_in(section, arg, tag)
            .and_then(|s| s.value.clone().ok());
        if ours != theirs {
            mismatches.push(format!(
                "[{section}{}] {tag}: nfs-utils {theirs:?}, nsmd {ours:?}",
                arg.map(|a| format!(" {a:?}")).unwrap_or_default()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    // A sanity check that the queries hit something.
    assert_eq!(ours.get_str("nfsd", "threads"), Some("10"));
    assert_eq!(ours.get_str("sm-notify", "retry-time"), Some("42"));
}

#[test]
fn short_and_long_help_are_the_same() {
    let long = parse_err(&["--help"]).to_string();
    assert_eq!(parse_err(&["-h"]).to_string(), long);
    assert_eq!(parse_err(&["-?"]).to_string(), long);
    assert!(long.contains("Refused. rpc.statd treats -N"), "{long}");
}

/// The instance files the README and `systemd/` show are read as nsmd reads them, so the
/// examples cannot drift from the parser.
#[test]
fn the_instance_file_examples_parse() {
    let top = env!("CARGO_MANIFEST_DIR");
    let readme = fs::read_to_string(format!("{top}/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in readme.lines() {
        match (&mut cur, line.trim()) {
            (None, "```toml") => cur = Some(String::new()),
            (Some(_), "```") => blocks.extend(cur.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(!blocks.is_empty(), "the README shows an instance file");
    let example = format!("{top}/systemd/instances.d-example.toml");
    blocks.push(fs::read_to_string(&example).unwrap());
    for text in &blocks {
        let spec = nsmd::config::instances::parse(Path::new("svc1.toml"), "svc1", text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(spec.name, "svc1");
        assert!(!spec.addresses.is_empty(), "{text}");
    }
}

#[test]
fn nsm_notify_has_a_version_and_names_its_own_options() {
    let bin = env!("CARGO_BIN_EXE_nsm-notify");
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nsm-notify {}", env!("CARGO_PKG_VERSION"))
    );
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Options sm-notify does not have:"), "{help}");
    assert!(!help.contains("nsmd-only"), "{help}");
}
