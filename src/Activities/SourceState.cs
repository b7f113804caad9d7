using System.Text.Json;
using SEmigrate.Sealing;
using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>What the source keeps for one migration, so that a source worker that dies mid-transfer
/// resumes after a restart: on disk the classification map, the last key epoch handed out, and per
/// destination how far the transfer is confirmed and how far it was sent; the data key in the kernel's
/// keyring, never on disk, so that a release erases it for good (see KernelKeyring).</summary>
public sealed class SourceState(HostContext host, Guid migrationId)
{
    private readonly string directory = host.MigrationDirectory(migrationId);

    /// <summary>Which key in the keyring is this migration's at this host (hosts on one kernel share a keyring,
    /// each in a mount namespace of its own, so no path names it).</summary>
    private string KeyName => $"semigrate data key|{host.Host}|{migrationId:N}";

    /// <summary>Whether the migration's data key is here (made at introspection, erased at release).</summary>
    public bool HasKey => KernelKeyring.Has(KeyName);

    /// <summary>Makes the migration's data key, unless it has one: generated here, at the source, it leaves only
    /// wrapped for the main host. A key made once is never made again: pages already sent are sealed under it,
    /// so if it is gone (the host restarted: the keyring does not outlive a boot) the migration cannot go on.</summary>
    public void EnsureKey()
    {
        lock (Releasing)
        {
            if (Released)
            {
                throw new ApplicationFailureException($"migration {migrationId} was released at {host.Host}: its key is not made again", nonRetryable: true);
            }
            if (HasKey)
            {
                return;
            }
            if (File.Exists(KeyCheckPath))
            {
                throw KeyGone();
            }
            using var key = DataKey.Generate();
            KernelKeyring.Save(KeyName, key);
            PrivateFile.Write(KeyCheckPath, key.DigestKey(Guid.Empty), overwrite: true); // that it was made (a one-way value: it opens nothing)
        }
    }

    /// <summary>Where the source notes that the migration's key was made (see EnsureKey).</summary>
    private string KeyCheckPath => Path.Combine(directory, "data-key.made");

    private ApplicationFailureException KeyGone() => new(
        $"the data key of migration {migrationId} is gone from {host.Host} (it lives in the kernel's keyring, which does not outlive a boot): " +
        "pages sent are sealed under it, so the migration cannot go on; it is undone", nonRetryable: true);

    public string MapPath => Path.Combine(directory, "classes.map");

    /// <summary>Which of this host's guests the migration moves, and in which mode: recorded at
    /// introspection, so later steps name neither.</summary>
    public MigratedGuest Guest
    {
        get => File.Exists(GuestPath) ? JsonSerializer.Deserialize<MigratedGuest>(File.ReadAllText(GuestPath))!
            : throw new InvalidOperationException($"no guest recorded in {directory}: this migration was not introspected here");
        set => WriteAtomically(GuestPath, JsonSerializer.Serialize(value));
    }

    /// <summary>Whether introspection got as far as recording the guest.</summary>
    public bool HasGuest => File.Exists(GuestPath);

    private string GuestPath => Path.Combine(directory, "guest.json");

    /// <summary>A key epoch never used before for this migration, written down before it is used: a
    /// restarted worker or a second attempt never seals under an epoch (so a nonce) already used.</summary>
    public uint NextEpoch() => new EpochFile(Path.Combine(directory, "epoch")).Next();

    public DataKey LoadKey() => KernelKeyring.Load(KeyName)
        ?? throw (File.Exists(KeyCheckPath) && !Released ? KeyGone()
            : new ApplicationFailureException($"no data key for migration {migrationId} at {host.Host}: the guest was not introspected here, or the migration was released",
                nonRetryable: true));

    /// <summary>The key the VM's memory digests are MACs under: from the data key, or once that is gone
    /// (released), as the release kept it (it opens no page).</summary>
    public byte[] DigestKey(Guid vm)
    {
        lock (Releasing)
        {
            if (File.Exists(DigestKeyPath))
            {
                return File.ReadAllBytes(DigestKeyPath);
            }
            using var key = LoadKey();
            return key.DigestKey(vm);
        }
    }

    /// <summary>A release erases the key: nobody derives from it meanwhile.</summary>
    private static readonly Lock Releasing = new();

    private string DigestKeyPath => Path.Combine(directory, "digest.key");

    /// <summary>How far the transfer to <paramref name="host"/> is, over all its attempts.</summary>
    public TransferCheckpoint Checkpoint(string host)
    {
        var path = CheckpointPath(host);
        return File.Exists(path) ? JsonSerializer.Deserialize<TransferCheckpoint>(File.ReadAllText(path))! : new TransferCheckpoint(0, 0, 0, 0, 0, 0);
    }

    public void SaveCheckpoint(string host, TransferCheckpoint checkpoint) =>
        WriteAtomically(CheckpointPath(host), JsonSerializer.Serialize(checkpoint));

    /// <summary>Whether the data key left for the main host (wrapped): from then on the VM may run there, and
    /// undoing takes the main host's word that it declined (see TakeOvers).</summary>
    public bool HandedOver => File.Exists(HandedOverPath);

    public void MarkHandedOver() => File.WriteAllText(HandedOverPath, "");

    private string HandedOverPath => Path.Combine(directory, "handed-over");

    /// <summary>Whether the migration was released here: it is over, and no step of it runs again.</summary>
    public bool Released => File.Exists(ReleasedPath);

    private string ReleasedPath => Path.Combine(directory, "released");

    /// <summary>Erases the key and drops the checkpoints, and marks the migration over; the map
    /// stays for inspection, and the digest key (which opens nothing) for a check of what was sent.</summary>
    public void Release(Guid vm)
    {
        File.WriteAllText(ReleasedPath, ""); // first: from here on, no step of this migration runs here
        lock (Releasing)
        {
            ReleaseKey(vm);
        }
        foreach (var file in Directory.GetFiles(directory, "checkpoint-*"))
        {
            File.Delete(file);
        }
    }

    private void ReleaseKey(Guid vm)
    {
        if (KernelKeyring.Load(KeyName) is { } key)
        {
            using (key)
            {
                PrivateFile.Write(DigestKeyPath, key.DigestKey(vm), overwrite: true);
            }
            KernelKeyring.Erase(KeyName);
        }
    }

    private string CheckpointPath(string host) => Path.Combine(directory, $"checkpoint-{host}");

    private static void WriteAtomically(string path, string text)
    {
        File.WriteAllText(path + ".tmp", text);
        File.Move(path + ".tmp", path, overwrite: true);
    }
}

/// <summary>The guest a migration moves (its name in the source's guest folder), the migration's mode, and
/// whether the guest is running (its memory a RAM file, its core moving as device state).</summary>
public sealed record MigratedGuest(string Name, Contracts.MigrationMode Mode, bool Live = false);

/// <summary>Pages below <paramref name="Confirmed"/> are stored at the host; pages below
/// <paramref name="Sent"/> were sent at least once. Bytes and resends add up over attempts and rounds
/// (<paramref name="Round"/>: see TransferPages), as do the key epochs attempts took.</summary>
public sealed record TransferCheckpoint(long Confirmed, long Sent, long Bytes, long ResentPages, long ResentBytes, int Attempts, int Round = 1,
    IReadOnlyList<uint>? Epochs = null);
