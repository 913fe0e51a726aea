"""SandboxPolicy: what the operating system lets one tool process do, derived from a profile.

The mapping is deliberately coarse, so that it can be stated in one table (docs/security.md):

==========  =================  =============================  ========
shell       write              writes (files and directories)  network
==========  =================  =============================  ========
readonly    any                the call's scratch dir only     none
allowed     none               the call's scratch dir only     none
allowed     working_dir        working_dir and scratch dir     open
allowed     anywhere           not confined                    open
==========  =================  =============================  ========

A readonly shell is confined even when the profile's write tools may write elsewhere, because
its promise is that a command changes nothing. Without write access the network is closed too,
since a connection is a way to change things (a database, another job's keys) and to send data
out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rho_agent.permissions import PermissionProfile

Network = Literal["none", "open"]


@dataclass(frozen=True)
class SandboxPolicy:
    """The OS rules for a tool process; ``confined`` False means run it as it is.

    ``write_working_dir``: writes are allowed beneath the working directory (always beneath the
    call's scratch directory and to ``/dev/null``-like devices). ``network``: ``none`` closes
    every socket family. ``metadata``: whether chmod/chown/utime/xattr calls are allowed
    (Landlock does not see them, so a profile that changes nothing blocks them with seccomp).
    """

    confined: bool
    write_working_dir: bool = False
    network: Network = "none"
    metadata: bool = False

    @classmethod
    def for_profile(cls, profile: PermissionProfile) -> SandboxPolicy:
        """The rules for ``profile``'s bash (see the table in the module docstring)."""
        if profile.shell == "readonly" or profile.write == "none":
            return cls(confined=True)
        if profile.write == "working_dir":
            return cls(confined=True, write_working_dir=True, network="open", metadata=True)
        return cls(confined=False, write_working_dir=True, network="open", metadata=True)


UNCONFINED = SandboxPolicy(confined=False, write_working_dir=True, network="open", metadata=True)
"""The policy of a command run without a profile (the backend used directly, not by a tool)."""
