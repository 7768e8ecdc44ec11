"""bounce: delivery status notices for failed, delayed and delivered mail (Postfix's bounce(8))."""
