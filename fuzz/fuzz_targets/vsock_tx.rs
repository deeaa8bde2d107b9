//! Fuzzes the vsock device's TX path: the guest's TX descriptor table, avail ring and buffers are
//! the fuzzer's bytes; the device parses the chains, runs the packets through the muxer (a host
//! listener at `<uds>_1` accepts guest connections, so connection state is reached too) and
//! answers into a well-formed RX queue. The device runs in a real event loop, as in the VMM.
//!
//! Guest memory layout (64 KiB):
//!   0x0000..0x8000  fuzzer bytes: TX desc table (16 x 16 bytes) at 0x0, avail ring at 0x100,
//!                   used ring at 0x200 (the device writes it), buffers anywhere
//!   0x8000..        RX queue (desc 0x8000, avail 0x8100, used 0x8200), RX buffers at 0x9000
//!   0xc000..        event queue
//! Descriptors may point anywhere, including outside guest memory.

#![no_main]

#[path = "common/vsock.rs"]
mod vsock;

use std::cell::RefCell;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use hull_vmm::devices::virtio::vsock::Vsock;
use hull_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vsock::{queue, sane_rx, NoIrq, GUEST_CID, MEM_SIZE};

struct Harness {
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    host: UnixListener,
    _dir: PathBuf,
}

impl Harness {
    fn new() -> Harness {
        let dir = std::env::temp_dir().join(format!("hull-vsock-fuzz.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds.clone()).unwrap()));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let host = UnixListener::bind(dir.join("v.sock_1")).unwrap();
        host.set_nonblocking(true).unwrap();
        Harness {
            dev,
            em,
            host,
            _dir: dir,
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = data.len().min(0x8000);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();

    // A sane RX queue with 8 buffers (header + 1 KiB), so replies have somewhere to go.
    sane_rx(&mem, 0x8000, 0x9000, 8);

    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        // Event index mode on odd-length inputs: the fuzzer runs both.
        let event_idx = data.len() % 2 == 1;
        let queues = vec![
            queue(0x8000, 0x8100, 0x8200),
            queue(0x0, 0x100, 0x200),
            queue(0xc000, 0xc100, 0xc200),
        ]
        .into_iter()
        .map(|mut q| {
            q.set_event_idx(event_idx);
            q
        })
        .collect();
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let kicks: Vec<EventFd> = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        {
            let mut dev = h.dev.lock().unwrap();
            let mut f = dev.avail_features();
            if !event_idx {
                f &= !(1u64 << 29);
            }
            dev.set_acked_features(f);
            dev.activate(mem.clone(), Arc::new(NoIrq), queues, evts)
                .unwrap();
        }
        // Activation handles whatever the TX queue holds; then a kick and a few loop rounds
        // (connection sockets become readable/writable, RX drains).
        let _ = h.em.run_with_timeout(0);
        kicks[1].write(1).unwrap();
        kicks[0].write(1).unwrap();
        for _ in 0..3 {
            let _ = h.em.run_with_timeout(0);
        }
        // The guest driver goes away: everything is torn down for the next input.
        assert!(h.dev.lock().unwrap().reset());
        let _ = h.em.run_with_timeout(0);
        assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
        while let Ok((s, _)) = h.host.accept() {
            drop(s);
        }
    });
});
