//! Taps and tc redirects: setting them up, undoing a partial setup, tearing them down.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcOption,
};
use rtnetlink::{Handle, LinkUnspec};

use super::inspect::Link;
use super::{tap, NetInterface, NetworkError, TapDevice, TAP_SUFFIX};

/// The ingress qdisc's handle (`ffff:`), also the parent of its filters.
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// What a (partial) setup made, to undo it.
#[derive(Default)]
struct Done {
    /// Taps created.
    taps: Vec<String>,
    /// Links (interfaces and taps) given an ingress qdisc: (name, index).
    ingress: Vec<(String, u32)>,
}

/// The name of the tap for the `n`th interface.
pub(super) fn tap_name(n: usize) -> String {
    format!("tap{n}{TAP_SUFFIX}")
}

pub(super) async fn plumb(
    h: &Handle,
    interfaces: &[NetInterface],
) -> Result<Vec<TapDevice>, NetworkError> {
    let mut done = Done::default();
    let mut taps = Vec::new();
    for (n, iface) in interfaces.iter().enumerate() {
        match plumb_one(h, n, iface, &mut done).await {
            Ok(t) => taps.push(t),
            Err(error) => {
                tracing::warn!(interface = %iface.name, %error, "network setup failed, undoing it");
                return Err(undone(h, &done, error).await);
            }
        }
    }
    Ok(taps)
}

async fn plumb_one(
    h: &Handle,
    n: usize,
    iface: &NetInterface,
    done: &mut Done,
) -> Result<TapDevice, NetworkError> {
    let name = tap_name(n);
    if find_link(h, &iface.name).await?.is_none() {
        return Err(NetworkError::NotFound(iface.name.clone()));
    }
    create_tap(h, &name).await?;
    done.taps.push(name.clone());
    mirror(h, iface, &name, done).await?;
    Ok(TapDevice {
        name,
        mac: iface.mac.clone(),
        mtu: iface.mtu,
    })
}

/// Creates the persistent tap `name` (down); a link of that name already there is
/// [`NetworkError::TapExists`].
pub(super) async fn create_tap(h: &Handle, name: &str) -> Result<(), NetworkError> {
    if find_link(h, name).await?.is_some() {
        return Err(NetworkError::TapExists(name.to_string()));
    }
    tap::create_persistent(name).map_err(|source| {
        if source.raw_os_error() == Some(libc::EBUSY) {
            NetworkError::TapExists(name.to_string())
        } else {
            NetworkError::Tap {
                name: name.to_string(),
                source,
            }
        }
    })
}

/// Joins `iface` and the existing tap `tap_name` both ways: the tap takes the interface's MTU
/// and goes up, and each gets an ingress qdisc with a redirect to the other (recorded in
/// `done.ingress` as they are made).
async fn mirror(
    h: &Handle,
    iface: &NetInterface,
    tap_name: &str,
    done: &mut Done,
) -> Result<(), NetworkError> {
    let link = find_link(h, &iface.name)
        .await?
        .ok_or_else(|| NetworkError::NotFound(iface.name.clone()))?;
    let tap = find_link(h, tap_name)
        .await?
        .ok_or_else(|| NetworkError::NotFound(tap_name.to_string()))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(tap.index)
                .mtu(iface.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            NetworkError::netlink(
                format!("setting MTU {} on {tap_name} and bringing it up", iface.mtu),
                e,
            )
        })?;

    add_ingress(h, tap_name, tap.index).await?;
    done.ingress.push((tap_name.to_string(), tap.index));
    add_redirect(h, tap_name, tap.index, &iface.name, link.index).await?;
    add_ingress(h, &iface.name, link.index).await?;
    done.ingress.push((iface.name.clone(), link.index));
    add_redirect(h, &iface.name, link.index, tap_name, tap.index).await?;
    tracing::info!(interface = %iface.name, tap = %tap_name, mtu = iface.mtu, "mirrored interface to tap");
    Ok(())
}

/// Mirrors the namespace's only interface (as `cfg` read it) to the tap `tap_name` that is
/// already there (the placeholder a sandbox of its own namespace booted with). No interface:
/// nothing to do. On error, the qdiscs and filters made so far are removed (the tap stays).
pub(super) async fn attach(
    h: &Handle,
    cfg: &super::NetworkConfig,
    tap_name: &str,
) -> Result<(), NetworkError> {
    let iface = match cfg.interfaces.as_slice() {
        [] => return Ok(()),
        [iface] => iface,
        [_, second, ..] => {
            return Err(NetworkError::Unsupported {
                name: second.name.clone(),
                reason: "a second interface: the VM was booted with one NIC for this network \
                         namespace"
                    .into(),
            })
        }
    };
    let mut done = Done::default();
    if let Err(error) = mirror(h, iface, tap_name, &mut done).await {
        tracing::warn!(interface = %iface.name, %error, "network attach failed, undoing it");
        return Err(undone(h, &done, error).await);
    }
    Ok(())
}

/// Undoes `done` after `error`: the error to return (`error`, or `UndoFailed` with both).
async fn undone(h: &Handle, done: &Done, error: NetworkError) -> NetworkError {
    match undo(h, done).await {
        Ok(()) => error,
        Err(undo) => NetworkError::UndoFailed {
            error: Box::new(error),
            undo: Box::new(undo),
        },
    }
}

async fn undo(h: &Handle, done: &Done) -> Result<(), NetworkError> {
    let mut first_err = None;
    for (name, index) in &done.ingress {
        if let Err(e) = del_ingress(h, name, *index).await {
            tracing::warn!(interface = %name, error = %e, "undo: removing the ingress qdisc failed");
            first_err.get_or_insert(e);
        }
    }
    for name in &done.taps {
        let r = match find_link(h, name).await {
            Ok(Some(l)) => del_link(h, name, l.index).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(tap = %name, error = %e, "undo: removing the tap failed");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

pub(super) async fn teardown(h: &Handle) -> Result<(), NetworkError> {
    let links: Vec<Link> = list_links(h).await?;
    let taps: Vec<&Link> = links.iter().filter(|l| l.is_hull_tap()).collect();
    let ingress: Vec<i32> = h
        .qdisc()
        .get()
        .execute()
        .try_collect::<Vec<TcMessage>>()
        .await
        .map_err(|e| NetworkError::netlink("listing qdiscs", e))?
        .into_iter()
        .filter(|q| {
            q.header.parent == TcHandle::INGRESS
                && q.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "ingress"))
        })
        .map(|q| q.header.index)
        .collect();
    let mut first_err = None;
    for link in &links {
        if link.is_hull_tap() || link.loopback {
            continue;
        }
        let Ok(index) = i32::try_from(link.index) else {
            continue;
        };
        if !ingress.contains(&index) {
            continue;
        }
        let filters: Vec<TcMessage> = match h
            .traffic_filter(index)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
        {
            Ok(f) => f,
            Err(e) if is_gone(&e) => continue,
            Err(e) => {
                return Err(NetworkError::netlink(
                    format!("listing ingress filters of {}", link.name),
                    e,
                ))
            }
        };
        // Ours: a filter redirecting to a hull tap or to a link that is gone (a tap deleted by
        // a teardown that crashed before it got here), or no filter at all (a crash between
        // adding the qdisc and its filter); an ingress qdisc without filters does nothing anyway.
        let targets: Vec<u32> = filters.iter().flat_map(mirred_targets).collect();
        let ours = filters.is_empty()
            || targets.iter().any(|t| {
                taps.iter().any(|l| l.index == *t) || !links.iter().any(|l| l.index == *t)
            });
        if !ours {
            tracing::debug!(interface = %link.name, "leaving an ingress qdisc that is not hull's");
            continue;
        }
        if let Err(e) = del_ingress(h, &link.name, link.index).await {
            first_err.get_or_insert(e);
        }
    }
    for tap in &taps {
        if let Err(e) = del_link(h, &tap.name, tap.index).await {
            first_err.get_or_insert(e);
        }
    }
    tracing::info!(taps = taps.len(), "network teardown done");
    first_err.map_or(Ok(()), Err)
}

/// The interface indices a filter's mirred actions send to.
fn mirred_targets(f: &TcMessage) -> Vec<u32> {
    let mut out = Vec::new();
    for a in &f.attributes {
        let TcAttribute::Options(opts) = a else {
            continue;
        };
        for o in opts {
            let TcOption::U32(TcFilterU32Option::Action(actions)) = o else {
                continue;
            };
            for action in actions {
                out.extend(action_targets(action));
            }
        }
    }
    out
}

fn action_targets(a: &TcAction) -> Vec<u32> {
    let mut out = Vec::new();
    for attr in &a.attributes {
        if let TcActionAttribute::Options(opts) = attr {
            for o in opts {
                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                    out.push(p.ifindex);
                }
            }
        }
    }
    out
}

/// Whether a netlink error says the object is not there (any more).
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc::ENODEV | libc::ENOENT | libc::EINVAL))
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Every link of the namespace, as netlink gives them.
pub(super) async fn dump_links(h: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::netlink("listing links", e))
}

async fn list_links(h: &Handle) -> Result<Vec<Link>, NetworkError> {
    Ok(dump_links(h)
        .await?
        .iter()
        .map(Link::from_message)
        .collect())
}

async fn find_link(h: &Handle, name: &str) -> Result<Option<Link>, NetworkError> {
    let r: Result<Vec<LinkMessage>, _> = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_collect()
        .await;
    match r {
        Ok(m) => Ok(m.first().map(Link::from_message)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(NetworkError::netlink(format!("looking up link {name}"), e)),
    }
}

fn to_i32(name: &str, index: u32) -> Result<i32, NetworkError> {
    i32::try_from(index).map_err(|_| NetworkError::NotFound(format!("{name} (index {index})")))
}

async fn add_ingress(h: &Handle, name: &str, index: u32) -> Result<(), NetworkError> {
    h.qdisc()
        .add(to_i32(name, index)?)
        .ingress()
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("adding an ingress qdisc to {name}"), e))
}

/// `tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 action mirred egress
/// redirect dev TO`.
async fn add_redirect(
    h: &Handle,
    from: &str,
    from_index: u32,
    to: &str,
    to_index: u32,
) -> Result<(), NetworkError> {
    let what = || format!("adding a redirect filter from {from} to {to}");
    h.traffic_filter(to_i32(from, from_index)?)
        .add()
        .parent(INGRESS_HANDLE)
        // The protocol goes in network byte order, as tc sends `htons(ETH_P_ALL)`.
        .protocol((libc::ETH_P_ALL as u16).to_be())
        .redirect(to_index)
        .map_err(|e| NetworkError::netlink(what(), e))?
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(what(), e))
}

/// `tc qdisc del dev NAME ingress`; not there is fine.
async fn del_ingress(h: &Handle, name: &str, index: u32) -> Result<(), NetworkError> {
    let mut req = h.qdisc().del(to_i32(name, index)?);
    let m = req.message_mut();
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = INGRESS_HANDLE.into();
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    match req.execute().await {
        Ok(()) => {
            tracing::debug!(interface = %name, "removed the ingress qdisc");
            Ok(())
        }
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(NetworkError::netlink(
            format!("removing the ingress qdisc of {name}"),
            e,
        )),
    }
}

/// `ip link del NAME`; not there is fine.
async fn del_link(h: &Handle, name: &str, index: u32) -> Result<(), NetworkError> {
    match h.link().del(index).execute().await {
        Ok(()) => {
            tracing::debug!(link = %name, "removed");
            Ok(())
        }
        Err(e) if matches!(errno(&e), Some(libc::ENODEV | libc::ENOENT)) => Ok(()),
        Err(e) => Err(NetworkError::netlink(format!("removing {name}"), e)),
    }
}
