"""syncd: keeps "is this user in audience X?" up to date in Nat and User.com."""

__version__ = "0.1.0"
