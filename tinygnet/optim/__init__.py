"""Optimisers (SGD, Adam, AdamW), learning-rate schedules and EMA weight averaging.

    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    scheduler = PaperStepLR(optimizer)          # x0.96 every 8 epochs
    ema = EMA(model.parameters())
    for epoch in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
            ema.update()
        scheduler.step()                        # after optimizer.step(), once per epoch
"""
from .ema import EMA
from .lr_scheduler import CosineAnnealingLR, LinearWarmup, LRScheduler, OneCycleLR, PaperStepLR, StepLR
from .optimizer import SGD, Adam, AdamW, Optimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "PaperStepLR",
           "CosineAnnealingLR", "LinearWarmup", "OneCycleLR", "EMA"]
