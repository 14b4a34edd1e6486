"""Localisation metrics: IoU/IoBB, the ChestX-ray14 Acc/AFP protocol, MaxBoxAccV2 and PxAP."""
