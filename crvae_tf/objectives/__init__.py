"""The maths of the objectives, as pure functions with per-example outputs (gin-free, Keras-free).

distributions   TFP posterior, prior and Bernoulli likelihood
bounds          distortion, per-time-step KL, weighted rate, active units, log importance weights, IWAE bound,
                streaming float64 log-mean-exp
losses          the adversarial family: reconstruction, generator adversarial loss, mutual information,
                discriminator batch / loss / accuracy and the skip rule
"""
