"""Prediction with a trained model: the ``Predictor`` API and ``fastinst predict``'s file pipeline."""

from fastinst.predict.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
