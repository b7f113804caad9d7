using System.Globalization;
using SEmigrate.Sealing;

namespace SEmigrate.Activities;

/// <summary>What the source keeps on disk for one migration, so that a source worker that dies
/// mid-transfer resumes after a restart: the data key (mode 0600), the classification map, the last key
/// epoch handed out, and per destination how far the transfer is confirmed and how far it was sent.</summary>
public sealed class SourceState(string directory)
{
    private static readonly Lock EpochLock = new();

    public string KeyPath => Path.Combine(directory, "data.key");

    public string MapPath => Path.Combine(directory, "classes.map");

    /// <summary>A key epoch never used before for this migration, written down before it is used: a
    /// restarted worker or a second attempt never seals under an epoch (so a nonce) already used.</summary>
    public uint NextEpoch()
    {
        lock (EpochLock)
        {
            var path = Path.Combine(directory, "epoch");
            var last = File.Exists(path) ? uint.Parse(File.ReadAllText(path), CultureInfo.InvariantCulture) : 0;
            WriteAtomically(path, (last + 1).ToString(CultureInfo.InvariantCulture));
            return last + 1;
        }
    }

    public DataKey LoadKey() => File.Exists(KeyPath) ? DataKey.Load(KeyPath)
        : throw new InvalidOperationException($"no data key in {directory}: the guest was not introspected here, or the migration was released");

    /// <summary>Pages below Confirmed are stored at the host; pages below Sent were sent at least once.</summary>
    public (long Confirmed, long Sent) Checkpoint(string host)
    {
        var path = CheckpointPath(host);
        if (!File.Exists(path))
        {
            return (0, 0);
        }
        var parts = File.ReadAllText(path).Split(' ');
        return (long.Parse(parts[0], CultureInfo.InvariantCulture), long.Parse(parts[1], CultureInfo.InvariantCulture));
    }

    public void SaveCheckpoint(string host, long confirmed, long sent) =>
        WriteAtomically(CheckpointPath(host), string.Create(CultureInfo.InvariantCulture, $"{confirmed} {sent}"));

    /// <summary>Drops the key (overwritten first) and the checkpoints; the map stays for inspection.</summary>
    public void Release()
    {
        if (File.Exists(KeyPath))
        {
            File.WriteAllBytes(KeyPath, new byte[DataKey.Size]);
            File.Delete(KeyPath);
        }
        foreach (var file in Directory.GetFiles(directory, "checkpoint-*"))
        {
            File.Delete(file);
        }
    }

    private string CheckpointPath(string host) => Path.Combine(directory, $"checkpoint-{host}");

    private static void WriteAtomically(string path, string text)
    {
        File.WriteAllText(path + ".tmp", text);
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
