# pyspark.sql of the tests' local stand-in (see __init__.py): SparkSession.builder only.
from pyspark import SparkContext


class _Builder(object):
    def __init__(self):
        self._name = None
        self._conf = {}

    def appName(self, name):
        self._name = name
        return self

    def config(self, key, value):
        self._conf[key] = value
        return self

    def getOrCreate(self):
        sc = SparkContext.getOrCreate()
        if self._name and not sc.appName:
            sc.getConf().set('spark.app.name', self._name)
        for k, v in self._conf.items():
            sc.getConf().set(k, v)
        return SparkSession(sc)


class SparkSession(object):
    builder = None

    def __init__(self, sc):
        self.sparkContext = sc
        self.conf = sc.getConf()
        self.version = sc.version

    def stop(self):
        self.sparkContext.stop()


class _BuilderDescriptor(object):
    def __get__(self, obj, cls):
        return _Builder()


SparkSession.builder = _BuilderDescriptor()
