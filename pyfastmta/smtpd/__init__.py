"""smtpd: the SMTP server side (Postfix's smtpd(8))."""
