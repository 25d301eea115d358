"""`jailfarm provision` on a FreeBSD host (pure): `queries` names what to read from the host,
`plan_freebsd` compares farm.toml with the answers (freebsdfacts.py) and returns only the steps
still needed, in order, so a provisioned host plans nothing. This module holds the host's own
steps (kernel modules, datasets and reservation, the jail network and pf, sshd, directories,
the signing key) and the worker template; the master and nginx jails are in freebsdjails.py.

The master in its jail drives this host's jail(8) and zfs(8) over ssh as root, with a key sshd
accepts only from the master's address (the `sshd` step). Every generated jail parameter,
rc.conf variable and poudriere.conf key is one the spec documents.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from jailfarm.cmd import Cmd
from jailfarm.errors import UnsafeOperation
from jailfarm.host import zfs as zfsops
from jailfarm.names import snapshot_name
from jailfarm.poudriere.conf import render_poudriere_conf, worker_conf
from jailfarm.provision.freebsdfacts import (
    HOST_KEY,
    JIB,
    LINUX_MODULES,
    LOADER_CONF,
    MASTER_IDS,
    MASTER_UID,
    MASTER_USER,
    MODULES,
    PF_CONF,
    RACCT,
    SSHD_CONFIG,
    Context,
    Host,
    base_release,
    install_dir_cmd,
    parse_release,
    public_key_file,
    sysrc_cmd,
    yes,
)
from jailfarm.provision.freebsdjails import (
    jail_conf_step,
    jail_service_step,
    master_config_step,
    master_dirs_step,
    master_known_hosts_step,
    master_ssh_key_step,
    master_user_step,
    mountpoints_step,
    network_rc_step,
    nginx_config_step,
    packages_step,
    running_step,
    service_rc_step,
    service_step,
    userland_step,
)
from jailfarm.provision.plan import (
    MARKER,
    FileWrite,
    Plan,
    Step,
    block_between,
    managed_file,
    with_block,
)
from jailfarm.workers.layout import CURRENT, OWNER, templates_dataset
from jailfarm.workers.templatefill import (
    REQUIRED_PACKAGES,
    SUDO_RULE,
    check_mountpoint,
    plan_freebsd_fill,
)
from jailfarm.workers.templateplan import parse_state
from jailfarm.workers.workerplan import tree_mounts

if TYPE_CHECKING:
    from collections.abc import Callable

    from jailfarm.config import FarmConfig
    from jailfarm.provision.freebsdfacts import ServiceJail
    from jailfarm.provision.plan import Facts

__all__ = ["Context", "plan_freebsd", "queries", "render_pf_conf"]

MiB = 1 << 20


def queries(cfg: FarmConfig, ctx: Context) -> Callable[[Facts], list[Cmd]]:
    """What `gather` asks the host, round by round."""
    return lambda facts: Host(cfg, ctx, facts).queries()


def plan_freebsd(cfg: FarmConfig, ctx: Context, facts: Facts) -> Plan:
    """The steps that bring this FreeBSD host to what `cfg` describes, in order, computed from
    the host's `facts` (see `queries`). Problems (farm.toml or the host does not fit) are
    listed all at once; a plan with problems still shows the steps it could work out."""
    h = Host(cfg, ctx, facts)
    _fits(h)
    builders = (
        _modules,
        _racct,
        _datasets,
        _reservation,
        _lo1,
        _pf,
        _sshd,
        _host_dirs,
        _signing_key,
        *(_per_jail(userland_step, j) for j in h.jails),
        *(_per_jail(network_rc_step, j) for j in h.jails),
        mountpoints_step,
        jail_conf_step,
        jail_service_step,
        *(_per_jail(running_step, j) for j in h.jails),
        *(_per_jail(packages_step, j) for j in h.jails),
        master_user_step,
        master_ssh_key_step,
        master_known_hosts_step,
        master_dirs_step,
        master_config_step,
        *(_per_jail(service_rc_step, j) for j in h.jails),
        nginx_config_step,
        *(_per_jail(service_step, j) for j in h.jails),
        _template,
    )
    steps = []
    for build in builders:
        try:
            step = build(h)
        except UnsafeOperation as e:
            h.problems.append(str(e))
            continue
        if step is not None:
            steps.append(step)
    _notes(h)
    return Plan(tuple(steps), tuple(dict.fromkeys(h.problems)), tuple(h.notes))


def _per_jail(
    build: Callable[[Host, ServiceJail], Step | None], jail: ServiceJail
) -> Callable[[Host], Step | None]:
    return lambda h: build(h, jail)


# ---- does farm.toml fit this host? --------------------------------------------------------------


def _fits(h: Host) -> None:
    cfg, p = h.cfg, h.p
    if p.external_interface is None:
        what = "NAT the jail network out of it" if h.lo1 else "bridge the jails to it (jib)"
        h.problems.append(
            "provision.external_interface is not set: provision needs the host's network "
            f'interface to {what}, e.g. external_interface = "em0"'
        )
    elif p.external_interface not in h.interfaces:
        h.problems.append(
            f"provision.external_interface {p.external_interface!r} is not an interface of "
            f"this host ({' '.join(sorted(h.interfaces))})"
        )
    _fits_master_reach(h)
    if cfg.workers.master_address != p.master_address:
        h.problems.append(
            f"workers.master_address is {cfg.workers.master_address or '(unset: web.bind)'}; "
            f"worker jails reach the master in jail {p.master_jail} at its address: set "
            f'workers.master_address = "{p.master_address}"'
        )
    if cfg.web.bind not in ("127.0.0.1", p.master_address):
        h.problems.append(
            f"web.bind {cfg.web.bind!r} is not an address of the master jail: use "
            f'"127.0.0.1" (in a jail, its own address, jails spec gotcha 1) or "{p.master_address}"'
        )
    if cfg.nginx.bind not in ("0.0.0.0", p.nginx_address):
        h.problems.append(
            f"nginx.bind {cfg.nginx.bind!r} is not an address of the nginx jail: use "
            f'"0.0.0.0" or "{p.nginx_address}"'
        )
    _fits_host(h)


def _fits_master_reach(h: Host) -> None:
    """The master in its jail drives this host's jail(8) and zfs(8) through an SshRunner to
    a [[jail_hosts]] entry: it must name this host at host_address, as root."""
    local = [j for j in h.cfg.jail_hosts if j.ssh == h.p.host_address]
    if not local:
        h.problems.append(
            f'no [[jail_hosts]] entry has ssh = "{h.p.host_address}" (provision.host_address): '
            f"the master runs in jail {h.p.master_jail} and reaches this host's jail(8) and "
            "zfs(8) over ssh; add it (and drop the entry without ssh)"
        )
    for j in h.cfg.jail_hosts:
        if j.ssh is None:
            h.problems.append(
                f"jail_hosts {j.name!r} has no ssh: from the master's jail, only ssh reaches a "
                "jail host"
            )
        elif j in local and j.ssh_user != "root":
            h.problems.append(
                f"jail_hosts {j.name!r}: ssh_user {j.ssh_user!r}; jail(8) and zfs(8) need root"
            )
        elif j not in local:
            h.notes.append(
                f"jail host {j.name} ({j.ssh}) is another machine: provision covers this host "
                "only; give that host the worker template and the master's key yourself"
            )


def _fits_host(h: Host) -> None:
    cfg = h.cfg
    if h.pool_size is None:
        h.problems.append(f"pool {cfg.zfs.pool} is not imported (zpool list): create it first")
    elif h.mountpoint(h.root) is None:
        h.problems.append(
            f"{h.root} has no mountpoint to put jail roots below (mountpoint none or legacy)"
        )
    release = cfg.template.release or ""
    if release and parse_release(release, "template.release") > h.host_release:
        h.problems.append(
            f"template.release {release} is newer than this host's kernel: jails may run "
            "older releases, never newer ones (jails spec a.1 #3, gotcha 30)"
        )
    _fits_mount_paths(h)
    site = h.stat(h.ctx.site_packages)
    if site is None or not site.is_dir:
        h.problems.append(f"{h.ctx.site_packages} (jailfarm's Python packages) is not a directory")
    elif site.mode & 0o005 != 0o005:
        h.problems.append(
            f"{h.ctx.site_packages} is not readable by others (mode {site.mode:04o}): the master "
            f"runs as {MASTER_USER}; install jailfarm where every user can read it"
        )
    for mount in tree_mounts(cfg):
        if h.stat(mount.host_path) is None:
            h.problems.append(f"ports tree {mount.host_path} does not exist on this host")
    if not h.lo1 and h.stat(JIB) is None:
        h.problems.append(f"{JIB} is missing (install the base system's examples, jails spec d.96)")
    if h.host_key is None:
        h.problems.append(f"{HOST_KEY} is missing: start sshd once (service sshd onestart)")
    if not h.sshd_running:
        h.problems.append(
            "sshd is not running: the master reaches this host over ssh; enable it "
            "(sysrc sshd_enable=YES; service sshd start)"
        )
    if h.sshd_config is None:
        h.problems.append(f"{SSHD_CONFIG} is missing")


def _fits_mount_paths(h: Host) -> None:
    """Before FreeBSD 12 a mount path had at most 88 characters (jails spec a.5 #30, c.83), and
    poudriere mounts deep below each worker's root; later kernels allow 1024, and poudriere
    hashes names that would not fit (poudriere.md 4.1)."""
    jails = h.mountpoint(h.datasets["jails"])
    if jails is None or h.host_release >= (12, 0):
        return
    worker = f"{jails}/{h.cfg.prefix}w{sum(j.max_jails for j in h.cfg.jail_hosts)}"
    longest = max(
        len(
            f"{worker}/usr/local/poudriere/data/.m/{j.name}-{t.name}-{s.name}/ref/compat/linux/proc"
        )
        for j in h.cfg.poudriere_jails
        for t in h.cfg.trees
        for s in h.cfg.sets
    )
    if longest > 88:
        h.problems.append(
            f"poudriere's mount paths in a worker reach {longest} characters, over the 88 this "
            "kernel allows: give zfs.root a shorter mountpoint (e.g. /j) or upgrade the host"
        )


def _notes(h: Host) -> None:
    cfg = h.cfg
    if cfg.web.auth == "none":
        h.notes.append(
            "web.auth = 'none': every jail on the jail network (workers included) can reach "
            "the master's web UI and force or stop builds (jails spec gotcha 1, 2); consider "
            "[[web.users]]"
        )
    if cfg.signing.command:
        h.notes.append(
            f"signing.command runs in jail {h.p.master_jail} as {MASTER_USER}: make sure it "
            "works there (its ssh key and known_hosts, for a remote signer)"
        )
    for tree in cfg.trees:
        h.notes.append(
            f"ports tree {tree.name}: each bulk clones {tree.url} ({tree.branch}) in its worker "
            "and registers it with poudriere (ports -c -m null); nothing to provision"
        )


# ---- the host ---------------------------------------------------------------------------------


def _modules(h: Host) -> Step | None:
    wanted = list(MODULES)
    if any(j.arch in ("amd64", "i386") for j in h.cfg.poudriere_jails):
        # poudriere.md 3.1: amd64/i386 build jails need the linux modules unless NOLINUX.
        wanted += LINUX_MODULES.get(h.uname[1], ())
    unloaded = [f for f, module in wanted if not h.loaded(module)]
    listed = h.host_rc.get("kld_list", "").split()
    unlisted = [f for f, _ in wanted if f not in listed]
    if not unloaded and not unlisted:
        return None
    commands = []
    check = []
    if unloaded:
        check.append(f"not loaded: {' '.join(unloaded)}")
        commands.append(Cmd(("kldload", "-n", *unloaded)))
    if unlisted:
        check.append(f"kld_list lacks: {' '.join(unlisted)}")
        # sysrc's += adds only the words not there yet (sysrc(8)).
        commands.append(sysrc_cmd(f"kld_list+={' '.join(unlisted)}"))
    return Step(
        "kernel-modules",
        "poudriere.md 3.1: a jailed poudriere cannot kldload; load on the host and keep them "
        "in kld_list (jails spec gotcha 19, b.37)",
        tuple(check),
        tuple(commands),
    )


def _racct(h: Host) -> Step | None:
    if not h.cfg.workers.memory_limit:
        return None
    text = h.text(LOADER_CONF) or ""
    if RACCT in text.splitlines():
        if h.racct != "1":
            h.notes.append(f"{RACCT} is in {LOADER_CONF}: reboot for rctl limits to work")
        return None
    sep = "" if not text or text.endswith("\n") else "\n"
    content = f"{text}{sep}# jailfarm: rctl memory limits for worker jails\n{RACCT}\n"
    h.notes.append(f"reboot after apply: {RACCT} takes effect at boot (jails spec e.103)")
    before = None if h.text(LOADER_CONF) is None else text.encode()
    return Step(
        "racct",
        "jails spec e.103: rctl needs kern.racct.enable=1 in /boot/loader.conf "
        "(workers.memory_limit is set)",
        (f"{LOADER_CONF} lacks {RACCT}",),
        files=(FileWrite(LOADER_CONF, content.encode(), 0o644, "root:wheel", before),),
    )


def _datasets(h: Host) -> Step | None:
    owner = {OWNER: h.cfg.name}
    commands, check = [], []
    if not h.exists(h.root):
        commands.append(zfsops.create_cmd(h.root, owner, parents=True))
        check.append(f"{h.root} does not exist")
    for dataset in h.datasets.values():
        if not h.exists(dataset):
            commands.append(zfsops.create_cmd(dataset, owner))
            check.append(f"{dataset} does not exist")
    if not commands:
        return None
    return Step(
        "datasets",
        "jails spec c.66, b.49: one dataset per jail, the farm's own below zfs.root, marked "
        "jailfarm:owner (the reaper and provision touch only what carries it)",
        tuple(check),
        tuple(commands),
    )


def _reservation(h: Host) -> Step | None:
    p, size = h.p, h.pool_size
    if size is None:
        return None
    want = (
        p.reservation if p.reservation is not None else size * (p.reservation_percent or 0) // 100
    )
    want -= want % MiB
    row = h.zfs_rows.get(h.reserve)
    have = int(row.get("reservation", "0")) if row else 0
    if row is not None and have == want:
        return None
    available = int(h.zfs_rows.get(h.cfg.zfs.pool, {}).get("available", "0"))
    if want > available + have:
        h.problems.append(
            f"provision.reservation: {want // MiB} MiB cannot be reserved; pool "
            f"{h.cfg.zfs.pool} has {available // MiB} MiB available: lower it"
        )
        return None
    why = (
        "jails spec c.63: clones grow; keep ~20% of the pool in a reservation, so a full pool "
        "can be recovered by lowering it (zfs set reservation)"
    )
    if row is None:
        props = {
            OWNER: h.cfg.name,
            "canmount": "off",
            "mountpoint": "none",
            "reservation": str(want),
        }
        cmd = zfsops.create_cmd(h.reserve, props)
        check = f"{h.reserve} does not exist"
    else:
        cmd = zfsops.set_cmd(h.reserve, "reservation", str(want))
        check = f"{h.reserve} reserves {have // MiB} MiB, not {want // MiB} MiB"
    return Step("reservation", why, (check,), (cmd,))


def _lo1(h: Host) -> Step | None:
    if not h.lo1:
        return None
    net = ipaddress.IPv4Network(h.p.network)
    want = f"inet {h.p.host_address} netmask {net.netmask}"
    current = h.host_rc.get("ifconfig_lo1")
    if current is not None and current != want:
        h.problems.append(
            f'rc.conf has ifconfig_lo1="{current}"; provision wants "{want}": set '
            "provision.network and provision.host_address to match it, or change it yourself"
        )
        return None
    commands, check = [], []
    if "lo1" not in h.host_rc.get("cloned_interfaces", "").split():
        check.append("cloned_interfaces lacks lo1")
        commands.append(sysrc_cmd("cloned_interfaces+=lo1"))
    if current is None:
        check.append("ifconfig_lo1 is not set")
        commands.append(sysrc_cmd(f"ifconfig_lo1={want}"))
    if "lo1" not in h.interfaces:
        check.append("lo1 does not exist")
        commands.append(Cmd(("service", "netif", "cloneup")))
    if commands:
        commands.append(Cmd(("service", "netif", "start", "lo1")))
    if not commands:
        return None
    return Step(
        "jail-network",
        "jails spec d.88: jail addresses on a cloned lo1, the host's own address on it too "
        "(the loopback rewrite, d.87, gotcha 1)",
        tuple(check),
        tuple(commands),
    )


def render_pf_conf(h: Host) -> str:
    """pf.conf for the lo1 network: NAT out, nginx's port forwarded in, nothing filtered."""
    p = h.p
    port = h.cfg.nginx.port
    return f"""\
# {MARKER} (farm {h.cfg.name}): `jailfarm provision apply` rewrites this file.
# The jail network on lo1 is NATed out of {p.external_interface}, and nginx's port is forwarded to
# the nginx jail (freebsd-jails-zfs.md d.88-d.90). Nothing is filtered: all else passes.
ext_if = "{p.external_interface}"
jail_if = "lo1"
set skip on lo0
set skip on $jail_if
no nat on $ext_if from ($jail_if:network) to ($jail_if:network)
nat on $ext_if from ($jail_if:network) to any -> ($ext_if)
rdr pass on $ext_if inet proto tcp to ($ext_if) port {port} -> {p.nginx_address} port {port}
"""


def _pf(h: Host) -> Step | None:
    if not h.lo1 or h.p.external_interface is None:
        return None
    write, foreign = managed_file(PF_CONF, render_pf_conf(h), h.text(PF_CONF))
    enabled = yes(h.host_rc.get("pf_enable"))
    commands, check, files = [], [], []
    if write.changed:
        files.append(write)
        check.append(f"{PF_CONF} is not jailfarm's" if foreign else f"{PF_CONF} differs")
        commands.append(Cmd(("pfctl", "-n", "-f", PF_CONF)))
    if not enabled:
        check.append("pf_enable is not YES")
        commands.append(sysrc_cmd("pf_enable=YES"))
    if not h.pf_running:
        check.append("pf is not running")
        commands.append(Cmd(("service", "pf", "start")))
    elif write.changed:
        commands.append(Cmd(("service", "pf", "reload")))
    if not commands:
        return None
    return Step(
        "pf",
        "jails spec d.90: pf NAT for the lo1 jail network (no block rules, so turning pf on "
        "does not cut the running ssh session, gotcha 34)",
        tuple(check),
        tuple(commands),
        tuple(files),
        destructive=foreign,
    )


def _sshd_block(h: Host) -> tuple[str, str, str]:
    begin, end = f"# BEGIN jailfarm {h.cfg.name}", f"# END jailfarm {h.cfg.name}"
    block = f"""\
{begin}
# {MARKER}: the master jail {h.p.master_jail} runs jail(8), zfs(8) and the template build here
# as root, with its own key and only from its address.
Match User root Address {h.p.master_address}
\tPermitRootLogin prohibit-password
\tAuthorizedKeysFile {h.master_pub}
\tAllowTcpForwarding no
\tAllowAgentForwarding no
\tX11Forwarding no
\tPermitTTY no
{end}
"""
    return block, begin, end


def _sshd(h: Host) -> Step | None:
    text = h.sshd_config
    if text is None:
        return None
    block, begin, end = _sshd_block(h)
    if block_between(text, begin, end) == block:
        return None
    content = with_block(text, block, begin, end)
    write = FileWrite(SSHD_CONFIG, content.encode(), 0o644, "root:wheel", text.encode())
    return Step(
        "sshd",
        "the master's SshRunner drives this host as root; sshd_config(5) Match allows only the "
        "master jail's address and key, no forwarding (jails spec j.154: services unprivileged "
        "in jails, the host runs only management)",
        (f"{SSHD_CONFIG} lacks the jailfarm block" if begin not in text else "block differs",),
        # onereload: rc.subr reloads it whatever sshd_enable says (it may run from onestart).
        (Cmd(("/usr/sbin/sshd", "-t")), Cmd(("service", "sshd", "onereload"))),
        (write,),
    )


def _host_dirs(h: Host) -> Step | None:
    commands, check = [], []
    for path, ids, mode in h.host_dirs:
        st = h.stat(path)
        if st is not None and not st.is_dir:
            h.problems.append(f"{path} exists and is not a directory ({st.kind})")
            continue
        if st is None:
            check.append(f"{path} does not exist")
        elif f"{st.uid}:{st.gid}" != ids or st.mode != mode:
            check.append(f"{path} is {st.uid}:{st.gid} {st.mode:04o}, not {ids} {mode:04o}")
        else:
            continue
        commands.append(install_dir_cmd(path, ids, mode))
    if not commands:
        return None
    return Step(
        "host-directories",
        "the published repositories and bulk logs (written by the master, nullfs-mounted "
        "into its jail and read-only into nginx's, jails spec j.151), the signing key's "
        "directory, the master's ssh key for sshd, the jails' console logs (j.157)",
        tuple(check),
        tuple(commands),
    )


def _signing_key(h: Host) -> Step | None:
    key = h.cfg.signing.key_file
    if key is None:
        return None
    pub = public_key_file(key)
    st, pub_st = h.stat(key), h.stat(pub)
    commands, check = [], []
    if st is None:
        check.append(f"{key} does not exist")
        commands += [
            Cmd(("openssl", "genrsa", "-out", key, "4096"), timeout=300),
            Cmd(("chmod", "0600", key)),
            Cmd(("chown", MASTER_IDS, key)),
        ]
    elif st.uid != MASTER_UID or st.mode != 0o600:
        check.append(f"{key} is uid {st.uid} mode {st.mode:04o}, not {MASTER_UID} 0600")
        commands += [Cmd(("chmod", "0600", key)), Cmd(("chown", MASTER_IDS, key))]
    if st is None or pub_st is None:
        check.append(f"{pub} does not exist")
        commands += [
            Cmd(("openssl", "rsa", "-in", key, "-pubout", "-out", pub)),
            Cmd(("chmod", "0644", pub)),
        ]
    if not commands:
        return None
    return Step(
        "signing-key",
        "jails spec f.114, feature 15: an RSA-4096 key (openssl genrsa), readable only by the "
        "master, never in a template or worker; its public half for consumers (never "
        "regenerated: an existing key is kept)",
        tuple(check),
        tuple(commands),
    )


# ---- the worker template ----------------------------------------------------------------------


def _template_reasons(h: Host, mountpoint: str) -> list[str]:
    """How the template tree differs from farm.toml (release, packages, poudriere.conf, the
    poudriere jails, the sudo rule)."""
    cfg = h.cfg
    tmpl = h.template_tree()
    if tmpl is None:
        return [f"{mountpoint} is not mounted"]
    reasons = []
    release = cfg.template.release or ""
    if tmpl.userland is None or base_release(tmpl.userland) != base_release(release):
        reasons.append(f"userland {tmpl.userland or 'missing'}, not {base_release(release)}")
    wanted = [*cfg.template.packages, *(p for p in REQUIRED_PACKAGES if cfg.template.packages)]
    missing = [p for p in dict.fromkeys(wanted) if p not in tmpl.packages]
    if missing:
        reasons.append(f"packages not installed: {' '.join(missing)}")
    if tmpl.poudriere_conf != render_poudriere_conf(worker_conf(cfg)):
        reasons.append("poudriere.conf differs")
    if tmpl.sudoers != SUDO_RULE:
        reasons.append("the poudriere sudo rule differs")
    for j in cfg.poudriere_jails:
        version, arch = tmpl.jails.get(j.name, (None, None))
        if (
            version is None
            or base_release(version) != base_release(j.version)
            or arch not in (j.arch, j.poudriere_arch)
        ):
            reasons.append(f"poudriere jail {j.name} is {version or 'missing'}/{arch or '-'}")
    return reasons


def _template(h: Host) -> Step | None:
    cfg = h.cfg
    dataset = templates_dataset(cfg)
    mountpoint = h.mountpoint(dataset)
    if mountpoint is None or cfg.template.release is None:
        return None
    check_mountpoint(mountpoint, h.mountpoint(h.root))
    state = parse_state(dataset, h.zfs_rows)
    if state.exists and h.zfs_rows[dataset].get("mounted") != "yes":
        h.problems.append(f"{dataset} is not mounted: zfs mount {dataset}")
        return None
    newest = state.generations[-1].tag if state.generations else None
    if state.live is None:
        reasons = ["no current generation"]
        if state.exists:
            reasons += _template_reasons(h, mountpoint)
    else:
        reasons = _template_reasons(h, mountpoint)
        if newest != state.current:
            h.notes.append(
                f"template: the newest generation {newest} is not current ({state.current}); "
                f"test it (jailfarm smoke --template {dataset}@{newest}), then "
                f"`jailfarm template promote {newest}`"
            )
    if not reasons:
        return None
    machine, arch = h.uname
    fill = plan_freebsd_fill(
        mountpoint,
        cfg.template.release,
        machine,
        arch,
        cfg.template.packages,
        f"{cfg.state_dir}/cache/dist",
        render_poudriere_conf(worker_conf(cfg)),
        [(j.name, j.version, j.poudriere_arch) for j in cfg.poudriere_jails],
    )
    commands = []
    if not state.exists:
        commands.append(zfsops.create_cmd(dataset, {OWNER: cfg.name}))
    else:
        commands.append(zfsops.set_cmd(dataset, "readonly", "off"))
    commands += fill
    commands += [
        zfsops.set_cmd(dataset, "readonly", "on"),
        zfsops.snapshot_cmd(snapshot_name(dataset, state.next_tag)),
    ]
    if state.live is None:
        commands.append(zfsops.set_cmd(dataset, CURRENT, state.next_tag))
    else:
        h.notes.append(
            f"template: {state.next_tag} will not be current; test it, then "
            f"`jailfarm template promote {state.next_tag}` (workers/template.py's rule)"
        )
    return Step(
        "worker-template",
        "jails spec c.66-c.70, feature 7: the worker template (workers/templatefill.py) with "
        "poudriere, its poudriere.conf and the [[poudriere.jails]] made once (poudriere.md 1.1), "
        "read-only, snapshotted as the next generation",
        tuple(reasons),
        tuple(commands),
        destructive=state.exists and not h.ours(dataset),
    )
