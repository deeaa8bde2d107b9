//! hull-runtime's agent client (`AgentClient`: hello, `read_responses`, the calls) against a
//! hostile agent whose whole side of the control connection is the fuzzer's bytes: the fake
//! agent reads the hello, writes the input (its first frame is the hello reply; request ids
//! count from 1), then closes. Meanwhile the client makes concurrent calls, `wait` among them
//! (no time limit). Oracle: no panic, and every call ends (a hang is a libFuzzer timeout): the
//! replies the bytes carry, or an error once the connection is gone.

#![no_main]

use std::path::PathBuf;
use std::time::Duration;

use hull_agent_protocol::frame::read_frame_async;
use hull_agent_protocol::{ProcessId, SpawnRequest};
use hull_runtime::agent::{AgentClient, Endpoint};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

struct Harness {
    rt: tokio::runtime::Runtime,
    listener: UnixListener,
    sock: PathBuf,
}

thread_local! {
    static H: Harness = {
        let dir = std::env::temp_dir().join(format!("hull-client-fuzz.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("a.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(async { UnixListener::bind(&sock).unwrap() });
        Harness { rt, listener, sock }
    };
}

fuzz_target!(|data: &[u8]| {
    H.with(|h| {
        h.rt.block_on(async {
            let agent = async {
                let (mut s, _) = h.listener.accept().await.unwrap();
                if read_frame_async(&mut s).await.is_ok() {
                    let _ = s.write_all(data).await;
                }
                // Dropping `s` closes the connection.
            };
            let client = async {
                let Ok(c) =
                    AgentClient::connect(Endpoint::unix(&h.sock), Duration::from_secs(5)).await
                else {
                    return;
                };
                let p = ProcessId(1);
                let _ = tokio::join!(
                    c.health(),
                    c.version(),
                    c.wait(p),
                    c.list_processes(),
                    c.stats(),
                    c.spawn(SpawnRequest::new(["/bin/true"])),
                    c.signal(p, 9, true),
                );
                // After the connection is gone, calls still end.
                let _ = c.wait(p).await;
            };
            let both = async { tokio::join!(agent, client) };
            tokio::time::timeout(Duration::from_secs(20), both)
                .await
                .expect("the client hung");
        })
    })
});
