"""SQLAlchemy models; importing this package registers every table on db.metadata."""

from app.models.post import Post
from app.models.user import Follow, Role, User

__all__ = ["Follow", "Post", "Role", "User"]
