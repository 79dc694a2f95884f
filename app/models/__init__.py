"""SQLAlchemy models; importing this package registers every table on db.metadata."""

from app.models.post import Post
from app.models.session import AuthSession, RevokedToken
from app.models.user import Follow, Role, User

__all__ = ["AuthSession", "Follow", "Post", "RevokedToken", "Role", "User"]
