"""Using a trained model: prediction on image files, activation maps, ONNX export and the web page."""
