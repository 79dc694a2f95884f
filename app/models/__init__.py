"""SQLAlchemy models; importing this package registers every table on db.metadata."""

from app.models.account import AccountToken, OutboxMail, TokenPurpose
from app.models.job import Job, JobFile, JobFileChunk, JobKind, JobStatus
from app.models.post import Post
from app.models.session import AuthSession, RevokedToken
from app.models.user import Follow, Role, User

__all__ = [
    "AccountToken",
    "AuthSession",
    "Follow",
    "Job",
    "JobFile",
    "JobFileChunk",
    "JobKind",
    "JobStatus",
    "OutboxMail",
    "Post",
    "RevokedToken",
    "Role",
    "TokenPurpose",
    "User",
]
