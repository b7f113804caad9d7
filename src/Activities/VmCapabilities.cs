using System.Security.Cryptography;
using System.Text;
using SEmigrate.Sealing;

namespace SEmigrate.Activities;

/// <summary>The capabilities this host's memory server issues for the VMs it serves (who holds one may
/// address its queues there, release it and see its use): an HMAC of the migration and VM under a secret of this host's own
/// (STATE/capability.key, 0600), so that starting paging again, after a retry or a restart, presents the
/// same one. The main host and the source get it, each wrapped for its pinned key (see PagingStarted).</summary>
public sealed class VmCapabilities(HostContext host)
{
    private readonly Lazy<byte[]> secret = new(() =>
    {
        var path = Path.Combine(host.StateDirectory, "capability.key");
        if (!File.Exists(path))
        {
            PrivateFile.Write(path, RandomNumberGenerator.GetBytes(32), overwrite: false);
        }
        return File.ReadAllBytes(path);
    });

    public byte[] For(Guid migrationId, Guid vm) => HMACSHA256.HashData(secret.Value, Encoding.ASCII.GetBytes($"semigrate capability v1|{migrationId:N}|{vm:N}"));

    /// <summary>What a capability's wrap is bound to (the VM, the host that issued it, and for whom: main or
    /// source): another's does not open.</summary>
    public static string WrapContext(Guid vm, string host, string holder) => $"semigrate capability|{vm:N}|{host}|{holder}";

    public const string MainHolder = "main";

    public const string SourceHolder = "source";
}
