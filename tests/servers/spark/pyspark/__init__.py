# A tiny local stand-in for pyspark, put on PYTHONPATH by the spark-submit emulator beside it
# (tests only: NOT Spark).  Enough for a test script to be written like a PySpark driver:
# SparkContext(appName=...) / SparkSession.builder...getOrCreate(), sc.parallelize(data,
# numSlices) with map, filter, flatMap, reduce, sum, count, collect, and SparkConf.get for
# the --conf pairs and spark.app.name / spark.master.  Everything runs in this process.
import functools
import json
import os

__version__ = '3.3.0'


class SparkConf(object):
    def __init__(self):
        self._d = json.loads(os.environ.get('SPARK_CONF_JSON', '{}'))
        self._d.setdefault('spark.app.name', os.environ.get('SPARK_APP_NAME', ''))
        self._d.setdefault('spark.master', os.environ.get('SPARK_MASTER', 'local[*]'))

    def get(self, key, default=None):
        return self._d.get(key, default)

    def set(self, key, value):
        self._d[key] = str(value)
        return self

    def getAll(self):
        return sorted(self._d.items())


class RDD(object):
    def __init__(self, items, slices):
        self._items = list(items)
        self._slices = max(1, slices)

    def map(self, f):
        return RDD([f(x) for x in self._items], self._slices)

    def filter(self, f):
        return RDD([x for x in self._items if f(x)], self._slices)

    def flatMap(self, f):
        return RDD([y for x in self._items for y in f(x)], self._slices)

    def reduce(self, f):
        return functools.reduce(f, self._items)

    def sum(self):
        return sum(self._items)

    def count(self):
        return len(self._items)

    def collect(self):
        return list(self._items)

    def getNumPartitions(self):
        return self._slices


class SparkContext(object):
    _active = None

    def __init__(self, master=None, appName=None, conf=None):
        self._conf = conf or SparkConf()
        if appName:
            self._conf.set('spark.app.name', appName)
        if master:
            self._conf.set('spark.master', master)
        SparkContext._active = self

    @classmethod
    def getOrCreate(cls, conf=None):
        return cls._active or cls(conf=conf)

    @property
    def appName(self):
        return self._conf.get('spark.app.name')

    @property
    def master(self):
        return self._conf.get('spark.master')

    @property
    def version(self):
        return __version__

    def getConf(self):
        return self._conf

    def parallelize(self, data, numSlices=2):
        return RDD(data, numSlices)

    def stop(self):
        SparkContext._active = None
