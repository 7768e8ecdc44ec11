"""The SMTP and LMTP delivery clients."""

from pyfastmta.smtp.client import (ClientTimeouts, ContentSource, DeliveryError, RecipientResult,
                                   SmtpConnection)

__all__ = ["ClientTimeouts", "ContentSource", "DeliveryError", "RecipientResult", "SmtpConnection"]
