using System.Text.Json;
using SEmigrate.Sealing;

namespace SEmigrate.Workers.Trust;

/// <summary>A host's public identity: its name and the public half of its key pair (STATE/host.key, 0600,
/// made on its first start), which a main host's data key is wrapped for. Every host worker writes it to
/// STATE/identity.json at start, for the operator to enrol (`semigrate host enrol NAME --identity FILE`).</summary>
public sealed record HostIdentity(string Host, byte[] HostKey)
{
    public const string FileName = "identity.json";

    /// <summary>Loads (or makes) the host's key pair and writes its identity beside it.</summary>
    public static HostKeyPair Ensure(string stateDirectory, string host)
    {
        var keys = HostKeyPair.LoadOrCreate(Path.Combine(stateDirectory, "host.key"));
        var path = Path.Combine(stateDirectory, FileName);
        File.WriteAllText(path + ".tmp", JsonSerializer.Serialize(new HostIdentity(host, keys.PublicKey)));
        File.Move(path + ".tmp", path, overwrite: true);
        return keys;
    }

    public static HostIdentity Read(string path) =>
        JsonSerializer.Deserialize<HostIdentity>(File.ReadAllText(path)) is { Host.Length: > 0, HostKey.Length: > 0 } identity ? identity
            : throw new InvalidDataException($"{path} is not a host identity (semigrate worker writes one to its state folder)");
}
