"""deployment.blobstorage.template.json: the writer uploads without the device's key, to the
Azure Blob Storage on IoT Edge module beside it, which copies the files to the cloud (as written
and as iotedgedev generates it with .env's values)."""
import copy

from conftest import ROOT, agent_desired, create_options, load_json
import genconfig

TEMPLATE = "deployment.blobstorage.template.json"
BLOB = "azureblobstorageoniotedge"


def test_is_the_tutorials_with_the_blob_module_and_no_device_key():
    base = load_json(ROOT / "deployment.template.json")
    doc = load_json(ROOT / TEMPLATE)
    modules = agent_desired(doc)["modules"]
    blob = modules[BLOB]
    assert blob["settings"]["image"] == "mcr.microsoft.com/azure-blob-storage:latest"
    assert set(blob["env"]) == {"LOCAL_STORAGE_ACCOUNT_NAME", "LOCAL_STORAGE_ACCOUNT_KEY"}
    # The module's own data folder, as its documentation says: <host folder>:/blobroot.
    assert create_options(blob["settings"])["HostConfig"]["Binds"] == ["/data/blobroot:/blobroot"]
    writer = modules["avroFileWriter"]
    binds = create_options(writer["settings"])["HostConfig"]["Binds"]
    assert binds == ["/data/avrofiles:/avrofiles"], "no config.toml, so no device key, in the writer"
    cs = writer["env"]["AVRO_UPLOAD_STORAGE_CONNECTION_STRING"]["value"]
    assert cs == ("DefaultEndpointsProtocol=http;"
                  "BlobEndpoint=http://azureblobstorageoniotedge:11002/${LOCAL_STORAGE_ACCOUNT_NAME};"
                  "AccountName=${LOCAL_STORAGE_ACCOUNT_NAME};AccountKey=${LOCAL_STORAGE_ACCOUNT_KEY}")
    container = writer["env"]["AVRO_UPLOAD_CONTAINER"]["value"]
    up = doc["modulesContent"][BLOB]["properties.desired"]["deviceToCloudUploadProperties"]
    assert up["uploadOn"] is True and up["deleteAfterUpload"] is True
    assert up["storageContainersForUpload"] == {container: {"target": container}}
    assert up["cloudStorageConnectionString"] == "${CLOUD_STORAGE_CONNECTION_STRING}"
    auto = doc["modulesContent"][BLOB]["properties.desired"]["deviceAutoDeleteProperties"]
    assert auto["deleteOn"] is True and auto["retainWhileUploading"] is True
    # Nothing else differs from the tutorial's manifest.
    expected = copy.deepcopy(base)
    agent_desired(expected)["modules"][BLOB] = blob
    w = agent_desired(expected)["modules"]["avroFileWriter"]
    w["settings"]["createOptions"]["HostConfig"]["Binds"] = binds
    w.setdefault("env", {}).update(writer["env"])
    expected["modulesContent"][BLOB] = doc["modulesContent"][BLOB]
    assert doc == expected


def test_generated_manifest_carries_the_env_values(generated):
    doc = load_json(generated[(TEMPLATE, "amd64")][0])
    text = generated[(TEMPLATE, "amd64")][0].read_text()
    assert "${LOCAL_STORAGE" not in text and "${CLOUD_STORAGE" not in text
    name = genconfig.DUMMY_ENV["LOCAL_STORAGE_ACCOUNT_NAME"]
    key = genconfig.DUMMY_ENV["LOCAL_STORAGE_ACCOUNT_KEY"]
    blob = agent_desired(doc)["modules"][BLOB]
    assert blob["env"]["LOCAL_STORAGE_ACCOUNT_NAME"]["value"] == name
    assert blob["env"]["LOCAL_STORAGE_ACCOUNT_KEY"]["value"] == key
    cs = agent_desired(doc)["modules"]["avroFileWriter"]["env"]["AVRO_UPLOAD_STORAGE_CONNECTION_STRING"]["value"]
    assert "BlobEndpoint=http://azureblobstorageoniotedge:11002/%s;" % name in cs
    assert cs.endswith("AccountName=%s;AccountKey=%s" % (name, key))
    up = doc["modulesContent"][BLOB]["properties.desired"]["deviceToCloudUploadProperties"]
    assert up["cloudStorageConnectionString"] == genconfig.DUMMY_ENV["CLOUD_STORAGE_CONNECTION_STRING"]
