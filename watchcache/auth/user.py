"""The identity a request carries once authenticated: kube-apiserver's ``user.Info``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"
AUTHENTICATED = "system:authenticated"


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user as the API server sees it: the same four fields a TokenReview returns and a
    SubjectAccessReview (or impersonation) sends. Frozen and hashable, so that it can key a
    decision cache."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    @classmethod
    def of(
        cls,
        name: str,
        uid: str = "",
        groups: tuple[str, ...] | list[str] = (),
        extra: Mapping[str, list[str] | tuple[str, ...]] | None = None,
    ) -> UserInfo:
        items = tuple(sorted((k, tuple(v)) for k, v in (extra or {}).items()))
        return cls(name=name, uid=uid, groups=tuple(groups), extra=items)

    @property
    def extra_map(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.extra}

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS


ANONYMOUS_USER = UserInfo(name=ANONYMOUS, groups=(UNAUTHENTICATED,))
