"""Is the data sound: balance, missing values, constant/ID-like/leaky columns, duplicates within and across
splits, outliers and likely label errors (confident learning), with its own recall measured on planted problems."""
