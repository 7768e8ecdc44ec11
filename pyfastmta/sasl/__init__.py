"""SMTP AUTH on the server side: the SASL conversation (PLAIN, LOGIN) with a backend that decides
— Dovecot's authentication server (smtpd_sasl_type = dovecot) or a password file in Dovecot's
passwd-file format (smtpd_sasl_type = passwd-file)."""
