"""Many fits as one job: hyperparameter search and k-fold cross-validation."""
