"""The queue manager: takes queued mail to delivery agents within Postfix's scheduling limits."""

from pyfastmta.qmgr.delivery import DeliveryAgent, DeliveryOutcome, DeliveryRequest
from pyfastmta.qmgr.scheduler import Scheduler, next_retry_time

__all__ = ["DeliveryAgent", "DeliveryOutcome", "DeliveryRequest", "Scheduler", "next_retry_time"]
