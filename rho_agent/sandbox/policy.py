"""SandboxPolicy: what the operating system lets one tool process do, derived from a profile.

The mapping is deliberately coarse, so that it can be stated in one table (docs/security.md):

==========  ===========  ==============================  ===============================
shell       write        writes (files and directories)  network (unless ``network`` set)
==========  ===========  ==============================  ===============================
readonly    any          the call's scratch dir only     none
allowed     none         the call's scratch dir only     none
allowed     working_dir  working_dir and scratch dir     all
allowed     anywhere     not confined                    all
==========  ===========  ==============================  ===============================

A readonly shell is confined even when the profile's write tools may write elsewhere, because
its promise is that a command changes nothing. Without write access the network is closed by
default too, since a connection is a way to change things (a database, another job's keys) and
to send data out. A profile's ``network`` field overrides that column on any row; with
``write: anywhere`` and a network other than ``all``, only the network is confined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the profile module uses this package's environment check at run time
    from rho_agent.permissions import PermissionProfile
    from rho_agent.permissions.profile import NetworkPolicy

Writes = Literal["scratch", "working_dir", "anywhere"]


@dataclass(frozen=True)
class SandboxPolicy:
    """The OS rules for a tool process.

    ``writes``: where files may be written: the call's scratch directory only, also beneath the
    working directory, or anywhere (always also ``/dev/null``-like devices). ``network``:
    ``none`` closes every socket family, ``inet`` leaves only IPv4 and IPv6 sockets.
    ``metadata``: whether chmod/chown/utime/xattr/chattr, SysV IPC and keyring calls are
    allowed (Landlock does not see them, so a profile that changes nothing blocks them with
    seccomp).
    """

    writes: Writes = "scratch"
    network: NetworkPolicy = "none"
    metadata: bool = False

    @property
    def confined(self) -> bool:
        """False when the policy restricts nothing, so the command runs as it is."""
        return (self.writes, self.network, self.metadata) != ("anywhere", "all", True)

    @classmethod
    def for_profile(cls, profile: PermissionProfile) -> SandboxPolicy:
        """The rules for ``profile``'s bash (see the table in the module docstring)."""
        network = profile.bash_network
        if profile.shell == "readonly" or profile.write == "none":
            return cls("scratch", network, metadata=False)
        if profile.write == "working_dir":
            return cls("working_dir", network, metadata=True)
        return cls("anywhere", network, metadata=True)


UNCONFINED = SandboxPolicy("anywhere", "all", metadata=True)
"""The policy of a command run without a profile (the backend used directly, not by a tool)."""
