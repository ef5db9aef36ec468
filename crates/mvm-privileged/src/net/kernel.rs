//! What host networking asks of the kernel besides the firewall: links and routes through
//! netlink, persistent taps, sysctls and the connection tracker. `HostNet` takes them as a
//! [`Kernel`], in the spirit of youki's `Syscall`: [`HostKernel`] is the real one, and unit
//! tests hand it `fake::FakeKernel`, links in memory, so the bring-up's decisions (what it
//! makes, keeps and removes, and for whom) are tested without root.

use std::net::Ipv4Addr;

use mvm_base::addr::VmNetwork;

use crate::net::netlink::{Link, Netlink, Route};
use crate::net::{conntrack, sysctl, tap};

/// The kernel calls of host networking.
pub trait Kernel {
    /// Every link.
    fn links(&self) -> anyhow::Result<Vec<Link>>;
    /// The link named `name`, if there is one.
    fn link(&self, name: &str) -> anyhow::Result<Option<Link>>;
    /// The IPv4 routes of the main table.
    fn routes(&self) -> anyhow::Result<Vec<Route>>;
    /// A new bridge named `name`.
    fn add_bridge(&mut self, name: &str) -> anyhow::Result<()>;
    /// Link `index`'s alias.
    fn set_alias(&mut self, index: u32, alias: &str) -> anyhow::Result<()>;
    /// `address`/`prefix` on link `index` (kept when it is there).
    fn set_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> anyhow::Result<()>;
    /// Link `index` up.
    fn set_up(&mut self, index: u32) -> anyhow::Result<()>;
    /// Link `index` enslaved to the bridge `controller`, and up.
    fn attach_and_up(&mut self, index: u32, controller: u32) -> anyhow::Result<()>;
    /// Link `index` deleted.
    fn delete(&mut self, index: u32) -> anyhow::Result<()>;
    /// A persistent tap named `name`, owned by `owner` (uid) when given.
    fn create_tap(&mut self, name: &str, owner: Option<u32>) -> anyhow::Result<()>;
    /// The sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) set to `value`.
    fn set_sysctl(&mut self, key: &str, value: &str) -> anyhow::Result<()>;
    /// A per-interface conf value, e.g. `("ipv4", "mvmbr3", "route_localnet", "1")`.
    fn set_interface_sysctl(
        &mut self,
        family: &str,
        interface: &str,
        key: &str,
        value: &str,
    ) -> anyhow::Result<()>;
    /// Every tracked connection of `network`'s addresses forgotten.
    fn forget_connections(&mut self, network: &VmNetwork) -> anyhow::Result<()>;
}

/// The kernel of the calling thread's network namespace.
pub struct HostKernel {
    netlink: Netlink,
}

impl HostKernel {
    /// Opens netlink in the calling thread's network namespace.
    pub fn open() -> anyhow::Result<HostKernel> {
        Ok(HostKernel { netlink: Netlink::open()? })
    }
}

impl Kernel for HostKernel {
    fn links(&self) -> anyhow::Result<Vec<Link>> {
        self.netlink.links()
    }

    fn link(&self, name: &str) -> anyhow::Result<Option<Link>> {
        self.netlink.link(name)
    }

    fn routes(&self) -> anyhow::Result<Vec<Route>> {
        self.netlink.routes()
    }

    fn add_bridge(&mut self, name: &str) -> anyhow::Result<()> {
        self.netlink.add_bridge(name)
    }

    fn set_alias(&mut self, index: u32, alias: &str) -> anyhow::Result<()> {
        self.netlink.set_alias(index, alias)
    }

    fn set_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
        self.netlink.set_address(index, address, prefix)
    }

    fn set_up(&mut self, index: u32) -> anyhow::Result<()> {
        self.netlink.set_up(index)
    }

    fn attach_and_up(&mut self, index: u32, controller: u32) -> anyhow::Result<()> {
        self.netlink.attach_and_up(index, controller)
    }

    fn delete(&mut self, index: u32) -> anyhow::Result<()> {
        self.netlink.delete(index)
    }

    fn create_tap(&mut self, name: &str, owner: Option<u32>) -> anyhow::Result<()> {
        tap::create_persistent_tap(name, owner)
    }

    fn set_sysctl(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        sysctl::set(key, value)
    }

    fn set_interface_sysctl(
        &mut self,
        family: &str,
        interface: &str,
        key: &str,
        value: &str,
    ) -> anyhow::Result<()> {
        sysctl::set_interface(family, interface, key, value)
    }

    fn forget_connections(&mut self, network: &VmNetwork) -> anyhow::Result<()> {
        conntrack::forget(network)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::*;

    /// What a [`FakeKernel`] holds: links, routes, sysctls, and each change in order.
    #[derive(Debug, Default)]
    pub(crate) struct KernelState {
        pub links: Vec<Link>,
        pub up: Vec<u32>,
        pub addresses: Vec<(u32, Ipv4Addr, u8)>,
        pub routes: Vec<Route>,
        pub sysctls: BTreeMap<String, String>,
        pub forgotten: Vec<Ipv4Addr>,
        pub changes: Vec<String>,
        next_index: u32,
    }

    impl KernelState {
        /// A link made outside mvm (another user's tap, a leftover bridge).
        pub(crate) fn add_link(&mut self, name: &str, tun_owner: Option<u32>, alias: Option<&str>) -> u32 {
            self.next_index += 1;
            let index = self.next_index + 100;
            let alias = alias.map(str::to_string);
            self.links.push(Link { index, name: name.into(), controller: None, tun_owner, alias });
            index
        }

        pub(crate) fn named(&self, name: &str) -> Option<&Link> {
            self.links.iter().find(|link| link.name == name)
        }

        fn at(&mut self, index: u32) -> anyhow::Result<&mut Link> {
            self.links
                .iter_mut()
                .find(|link| link.index == index)
                .ok_or_else(|| anyhow::anyhow!("no link {index}"))
        }
    }

    /// Links in memory; the test keeps a handle on the same state to look at it.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct FakeKernel {
        pub state: Rc<RefCell<KernelState>>,
    }

    impl Kernel for FakeKernel {
        fn links(&self) -> anyhow::Result<Vec<Link>> {
            Ok(self.state.borrow().links.clone())
        }

        fn link(&self, name: &str) -> anyhow::Result<Option<Link>> {
            Ok(self.state.borrow().named(name).cloned())
        }

        fn routes(&self) -> anyhow::Result<Vec<Route>> {
            Ok(self.state.borrow().routes.clone())
        }

        fn add_bridge(&mut self, name: &str) -> anyhow::Result<()> {
            let mut state = self.state.borrow_mut();
            anyhow::ensure!(state.named(name).is_none(), "{name} exists");
            state.add_link(name, None, None);
            state.changes.push(format!("add bridge {name}"));
            Ok(())
        }

        fn set_alias(&mut self, index: u32, alias: &str) -> anyhow::Result<()> {
            let mut state = self.state.borrow_mut();
            state.at(index)?.alias = Some(alias.into());
            state.changes.push(format!("alias {index} {alias}"));
            Ok(())
        }

        fn set_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
            let mut state = self.state.borrow_mut();
            state.at(index)?;
            if !state.addresses.contains(&(index, address, prefix)) {
                state.addresses.push((index, address, prefix));
            }
            Ok(())
        }

        fn set_up(&mut self, index: u32) -> anyhow::Result<()> {
            let mut state = self.state.borrow_mut();
            state.at(index)?;
            if !state.up.contains(&index) {
                state.up.push(index);
            }
            Ok(())
        }

        fn attach_and_up(&mut self, index: u32, controller: u32) -> anyhow::Result<()> {
            let mut state = self.state.borrow_mut();
            state.at(controller)?;
            state.at(index)?.controller = Some(controller);
            state.changes.push(format!("attach {index} to {controller}"));
            drop(state);
            self.set_up(index)
        }

        fn delete(&mut self, index: u32) -> anyhow::Result<()> {
            let mut state = self.state.borrow_mut();
            let name = state.at(index)?.name.clone();
            state.links.retain(|link| link.index != index && link.controller != Some(index));
            state.changes.push(format!("delete {name}"));
            Ok(())
        }

        fn create_tap(&mut self, name: &str, owner: Option<u32>) -> anyhow::Result<()> {
            let mut state = self.state.borrow_mut();
            if state.named(name).is_none() {
                state.add_link(name, owner, None);
                state.changes.push(format!("add tap {name} for {owner:?}"));
            }
            Ok(())
        }

        fn set_sysctl(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
            self.state.borrow_mut().sysctls.insert(key.into(), value.into());
            Ok(())
        }

        fn set_interface_sysctl(
            &mut self,
            family: &str,
            interface: &str,
            key: &str,
            value: &str,
        ) -> anyhow::Result<()> {
            self.set_sysctl(&format!("net.{family}.conf.{interface}.{key}"), value)
        }

        fn forget_connections(&mut self, network: &VmNetwork) -> anyhow::Result<()> {
            self.state.borrow_mut().forgotten.push(network.address);
            Ok(())
        }
    }
}
