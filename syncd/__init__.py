"""syncd: keeps "is this user in audience X?" up to date in Nat, User.com and any receiver of
Segment's HTTP API."""

__version__ = "0.1.0"
