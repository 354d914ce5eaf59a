"""BiLSTM student (Tang et al. 2019): input encoders, the model, distillation and baseline training."""
