"""SQLAlchemy models; importing this package registers every table on db.metadata."""

from app.models.job import Job, JobFile, JobFileChunk, JobKind, JobStatus
from app.models.post import Post
from app.models.session import AuthSession, RevokedToken
from app.models.user import Follow, Role, User

__all__ = [
    "AuthSession",
    "Follow",
    "Job",
    "JobFile",
    "JobFileChunk",
    "JobKind",
    "JobStatus",
    "Post",
    "RevokedToken",
    "Role",
    "User",
]
