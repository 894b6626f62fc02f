//! With the `static-curl` feature, curl-sys builds libcurl 8.22 from source, but (as of
//! curl-sys 0.4.91) without `HAVE_POLL`: libcurl then waits with select(), and every socket
//! numbered 1024 or more (FD_SETSIZE) fails to connect, which a crawl holding hundreds of
//! connections reaches. The define can only come from the C flags the `cc` crate reads, so
//! this refuses to build without it rather than build a client that fails that way.

use std::env;

fn main() {
    if env::var_os("CARGO_FEATURE_STATIC_CURL").is_none()
        || env::var("CARGO_CFG_TARGET_FAMILY").as_deref() != Ok("unix")
    {
        return;
    }
    let target = env::var("TARGET").unwrap_or_default();
    // The variables `cc` reads, most specific first.
    let names = [
        format!("CFLAGS_{target}"),
        format!("CFLAGS_{}", target.replace('-', "_")),
        "TARGET_CFLAGS".to_string(),
        "CFLAGS".to_string(),
    ];
    for name in &names {
        println!("cargo::rerun-if-env-changed={name}");
    }
    let defined = names.iter().any(|name| {
        env::var(name).is_ok_and(|flags| {
            flags
                .split_whitespace()
                .any(|flag| flag == "-DHAVE_POLL" || flag.starts_with("-DHAVE_POLL="))
        })
    });
    if !defined {
        eprintln!(
            "downpour-smol: the `static-curl` feature needs -DHAVE_POLL in the C flags, or \
             libcurl fails on sockets numbered 1024 or more. Set it for this target, e.g. in \
             .cargo/config.toml:\n\n[env]\nCFLAGS_{} = \"-DHAVE_POLL\"\n",
            target.replace('-', "_")
        );
        std::process::exit(1);
    }
}
